//! The `tokenwise` binary: parse the CLI and hand over to the library.
fn main() -> anyhow::Result<()> {
    tokenwise::cli::main()
}
