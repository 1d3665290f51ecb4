//! `umbra`: latent-variable generative models, from the ELBO to Stable Diffusion.

mod cmd;

use clap::Parser;

fn main() {
    // Behave like a Unix tool when piped into `head`: exit quietly instead of panicking in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Keep freed activation buffers in the process instead of page-faulting them back in every step.
    umbra_kernels::tune_allocator();
    let cli = cmd::Cli::parse();
    if let Err(err) = cmd::run(cli) {
        // One clear line (plus its causes), never a panic trace.
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
