//! The `mister-smith` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    mister_smith::cli::main()
}
