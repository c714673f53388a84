//! The `tokenwise` binary: parse the CLI and hand over to the library.

use std::process::ExitCode;

// mimalloc: the Route path allocates many small, short-lived buffers (h2 frames, decision
// strings); under saturation glibc malloc/free were ~10% of server CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A failed command prints one line (the error and its causes) and exits 1. Returning the error
/// from `main` instead would print anyhow's backtrace whenever `RUST_BACKTRACE` is set: a stack
/// trace for a missing file or a wrong model name. Backtraces are for bugs (panics).
fn main() -> ExitCode {
    match tokenwise::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and each cause its message does not already quote.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
