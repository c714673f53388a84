//! The `tokenwise` binary: parse the CLI and hand over to the library.

// mimalloc: the Route path allocates many small, short-lived buffers (h2 frames, decision
// strings); under saturation glibc malloc/free were ~10% of server CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() -> anyhow::Result<()> {
    tokenwise::cli::main()
}
