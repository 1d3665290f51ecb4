//! Subcommands. Each lives in its own module with its clap `Args` and a `run`.

use clap::{Parser, Subcommand};

pub mod autoencoder;
pub mod bench;
pub mod bench_kernels;
pub mod bench_sd;
pub mod bench_serve;
pub mod data;
pub mod diffusion;
pub mod kl;
pub mod ldm;
pub mod lora;
pub mod quickstart;
pub mod recognizer;
pub mod sd;
pub mod serve;
pub mod vae;

const ABOUT: &str = "umbra: latent-variable generative models in Rust — information theory, VAEs, \
hierarchical VAEs, variational diffusion models, score-based samplers and Stable Diffusion.";

const LONG_ABOUT: &str = "umbra: latent-variable generative models in Rust.

Everything from *Understanding Diffusion Models: A Unified Perspective* (Luo, 2022) and Stable \
Diffusion, as one binary: KL divergences and the forward/reverse-KL lab, VAEs and Markovian \
hierarchical VAEs with their ELBO term by term, variational diffusion models with every common \
sampler and guidance, and Stable Diffusion 1.x/2.x checkpoints in parity with diffusers.

Start here:
  umbra quickstart                 # KL lab + dataset grids + a VAE on the built-in digits
  umbra kl --target \"0.5*N(-2,0.6) + 0.5*N(2,0.6)\"
  umbra <command> --help           # every command explains what it computes, with an example";

#[derive(Parser, Debug)]
#[command(name = "umbra", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the main demo on built-in data and write everything into one output folder.
    Quickstart(quickstart::Args),
    /// Fit a Gaussian to a mixture by forward KL (mean-seeking) and reverse KL (mode-seeking).
    Kl(kl::Args),
    /// Inspect or fetch datasets (built-in digits, MNIST, toy 2-D).
    #[command(subcommand)]
    Data(data::Command),
    /// Train a model (vae, hvae, diffusion, classifier).
    #[command(subcommand)]
    Train(TrainCommand),
    /// Evaluate a trained model: ELBO terms, importance-weighted NLL, variational bound in bits/dim.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Draw samples from a trained model into an image grid.
    #[command(subcommand)]
    Sample(SampleCommand),
    /// Encode and decode test images with a trained VAE/HVAE; inputs beside reconstructions.
    Reconstruct(vae::ReconstructArgs),
    /// Decode a straight line between two encoded test images with a trained VAE.
    Interpolate(vae::InterpolateArgs),
    /// Stable Diffusion text-to-image.
    Txt2img(sd::Txt2ImgArgs),
    /// Stable Diffusion image-to-image (`--strength`).
    Img2img(sd::Img2ImgArgs),
    /// Stable Diffusion inpainting with a mask.
    Inpaint(sd::InpaintArgs),
    /// Print a prompt's CLIP token ids as JSON.
    Tokenize(sd::TokenizeArgs),
    /// Serve models over HTTP: A1111- and OpenAI-compatible APIs, a job queue, a web UI.
    Serve(serve::Args),
    /// Benchmarks: training step, single ops, SD UNet and VAE.
    #[command(subcommand)]
    Bench(bench::Command),
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// One-level VAE (Gaussian encoder, Bernoulli or Gaussian decoder).
    Vae(vae::TrainArgs),
    /// Markovian hierarchical VAE with L latent levels.
    Hvae(vae::TrainArgs),
    /// Diffusion model (pixel space or 2-D toy).
    Diffusion(diffusion::TrainArgs),
    /// Noise-conditional classifier (for classifier guidance and sample metrics).
    Classifier(diffusion::ClassifierArgs),
    /// The `shapes` attribute recognizer that scores text-to-image samples (count, attributes, binding, relation).
    #[command(long_about = recognizer::TRAIN_ABOUT, after_help = recognizer::TRAIN_EXAMPLES)]
    Recognizer(recognizer::TrainArgs),
    /// Stage 2 of latent diffusion: text-to-image UNet + CLIP text encoder on an autoencoder's latents, written as a diffusers pipeline.
    Ldm(ldm::TrainArgs),
    /// LoRA fine-tuning of a Stable Diffusion pipeline on captioned images; writes kohya and diffusers files.
    Lora(lora::TrainArgs),
    /// Stage 1 of latent diffusion: SD's AutoencoderKL from scratch (reconstruction + β·KL), written as a diffusers vae/.
    Autoencoder(autoencoder::Args),
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// ELBO per term and importance-weighted NLL of a VAE or HVAE checkpoint.
    Vae(vae::EvalArgs),
    /// Variational bound in bits/dim of a diffusion checkpoint, term by term.
    Diffusion(diffusion::EvalArgs),
    /// Text-to-image accuracy (attributes, binding, relation, whole prompt) of a latent diffusion model, scored by the recognizer.
    Ldm(ldm::EvalArgs),
}

#[derive(Subcommand, Debug)]
pub enum SampleCommand {
    /// Samples from the prior of a VAE or HVAE checkpoint.
    Vae(vae::SampleArgs),
    /// Samples from a diffusion checkpoint with any solver and guidance.
    Diffusion(diffusion::SampleArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Quickstart(a) => quickstart::run(a),
        Command::Kl(a) => kl::run(a),
        Command::Data(c) => data::run(c),
        Command::Train(TrainCommand::Vae(a)) => vae::train(a, vae::Kind::Vae),
        Command::Train(TrainCommand::Hvae(a)) => vae::train(a, vae::Kind::Hvae),
        Command::Train(TrainCommand::Diffusion(a)) => diffusion::train(a),
        Command::Train(TrainCommand::Classifier(a)) => diffusion::train_classifier(a),
        Command::Train(TrainCommand::Recognizer(a)) => recognizer::train(a),
        Command::Train(TrainCommand::Ldm(a)) => ldm::train(a),
        Command::Train(TrainCommand::Lora(a)) => lora::train(a),
        Command::Train(TrainCommand::Autoencoder(a)) => autoencoder::train(a),
        Command::Eval(EvalCommand::Vae(a)) => vae::eval(a),
        Command::Eval(EvalCommand::Diffusion(a)) => diffusion::eval(a),
        Command::Eval(EvalCommand::Ldm(a)) => ldm::eval(a),
        Command::Sample(SampleCommand::Vae(a)) => vae::sample(a),
        Command::Sample(SampleCommand::Diffusion(a)) => diffusion::sample(a),
        Command::Reconstruct(a) => vae::reconstruct(a),
        Command::Interpolate(a) => vae::interpolate(a),
        Command::Txt2img(a) => sd::txt2img(a),
        Command::Img2img(a) => sd::img2img(a),
        Command::Inpaint(a) => sd::inpaint(a),
        Command::Tokenize(a) => sd::tokenize(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(c) => bench::run(c),
    }
}
