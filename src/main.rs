#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    twilio_receiver::cli::main()
}
