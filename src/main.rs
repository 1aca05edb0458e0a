//! The `mister-smith` binary: everything lives in the library.

fn main() {
    let code = mister_smith::cli::main();
    // Exit without running destructors: the blocking NATS client's can wait
    // on a connection that is being torn down, and a command that has said
    // everything must not hang on its way out. Output is flushed first.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code));
}
