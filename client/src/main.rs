//! The `terminalwire` binary: parses arguments and runs the client library.

use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_memory();
    ExitCode::from(terminalwire_client::main_with_args(std::env::args_os()))
}

/// With glibc's malloc, freeing a large block at the top of the heap gives
/// it back to the kernel (above 128 KiB, by default), and the next chunk
/// of output faults it back in page by page: a quarter of the client's
/// CPU while it streams. glibc raises that threshold to twice the size of
/// the largest block it has `mmap`ed and freed, so one such block, never
/// touched (no page is faulted in), keeps the streaming buffers in the
/// heap. Other allocators ignore it; it costs one `mmap` and `munmap`.
fn keep_freed_memory() {
    const BLOCK: usize = 8 << 20;
    drop(std::hint::black_box(Vec::<u8>::with_capacity(BLOCK)));
}
