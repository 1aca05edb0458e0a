//! The `mister-smith` binary: everything lives in the library.

fn main() {
    let code = mister_smith::cli::main();
    mister_smith::cli::exit_now(code);
}
