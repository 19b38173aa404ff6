#![forbid(unsafe_code)]

// Set here, not in the library: tests and embedders keep their own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    twilio_receiver::cli::main()
}
