//! Stable Diffusion subcommands: `txt2img`, `img2img`, `inpaint`, `tokenize`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use umbra_nn::loading::StableDiffusion;
use umbra_nn::tokenizer::ClipTokenizer;
use umbra_sample::pipelines::infotext::{self, ImageMeta};
use umbra_sample::pipelines::load::{self, PipelineSource, SchedulerOverrides};
use umbra_sample::pipelines::{self, png_text, Generation, GenerationParams, InitNoises, VaeSample};
use umbra_sample::{SchedulerConfig, SolverKind};

const MODEL_HELP: &str = "A Stable Diffusion 1.x/2.x checkpoint: a diffusers folder (model_index.json, unet/, vae/, \
text_encoder/, tokenizer/, scheduler/), a single CompVis .safetensors file (then --config DIR names a diffusers \
folder of the same architecture for the configs and the tokenizer; without it SD 1.5's / SD 2.x's standard configs \
are used and a tokenizer/ folder is looked for next to the file), or a Hugging Face Hub repo id owner/name: its \
configs, tokenizer and safetensors weights (fp32, or --variant fp16) are downloaded into the HF cache \
($HF_HOME/hub, default ~/.cache/huggingface/hub) with a progress bar; HF_HUB_OFFLINE=1 uses the cache only; \
--hf-token or HF_TOKEN for gated repos. Without the `hub` feature: fetch the folder first, e.g. \
`huggingface-cli download owner/name --local-dir DIR`.";

macro_rules! txt2img_about {
    () => {
        "Stable Diffusion text-to-image.

Encodes --prompt and --negative-prompt with CLIP, starts from Gaussian latents x_T = noise · init_noise_sigma \
(image i of a batch from seed --seed + i, or --init-noise FILE), runs --steps steps of --sampler with \
classifier-free guidance ε̃ = ε(x, ∅) + s (ε(x, c) − ε(x, ∅)) (s = --guidance; s ≤ 1 runs the conditional model \
only), and decodes x_0 / scaling_factor with the VAE. Writes a PNG per image whose tEXt chunks hold the prompt, \
negative prompt, seed, steps, sampler, guidance, size and model (plus an A1111-style `parameters` chunk).

Samplers: ddim (default when the checkpoint's scheduler is DDIM), euler, euler-a, dpm++2m, dpm++2m-karras, ddpm, heun. \
Outputs match diffusers' StableDiffusionPipeline to 1/255 per pixel on the offline tiny-sd-v1 reference."
    };
}

macro_rules! txt2img_examples {
    () => {
        "Examples:
  umbra txt2img --model ../shared/reference/tiny-sd-v1/pipeline --prompt \"a photo of a cat\" --steps 4 --out cat.png
  umbra txt2img --model ~/models/stable-diffusion-v1-5 --prompt \"an astronaut riding a horse\" \\
      --negative-prompt \"blurry\" --steps 25 --guidance 7.5 --sampler dpm++2m-karras --seed 42 --batch 4 --out astro.png
  umbra txt2img --model v1-5-pruned-emaonly.safetensors --config ~/models/stable-diffusion-v1-5 --prompt \"a lighthouse\" --out l.png
  umbra txt2img --model DIR --prompt \"a cat\" --init-noise noise.safetensors --out cat.png   # reproduce a diffusers run
  umbra txt2img --model stabilityai/stable-diffusion-2-1 --variant fp16 --prompt \"a fox\" --out fox.png   # needs --features hub
  umbra txt2img --model DIR --device cuda --dtype f16 --prompt \"a fox\" --out fox.png   # needs --features cuda"
    };
}

macro_rules! img2img_about {
    () => {
        "Stable Diffusion image-to-image (SDEdit).

Encodes --image with the VAE (a seeded sample of q(z|x), times scaling_factor), noises it to the level of step \
steps − ⌊steps · strength⌋ and runs the remaining steps with guidance. --strength 1 ignores the image's content; \
0.3 keeps its layout and colours. The image is resized to --width × --height (default: its own size, rounded down \
to a multiple of 8).

Reproducing a diffusers run: --init-noise FILE (safetensors) with the tensors `noise` (the add-noise ε) and \
`posterior_noise` (the ε of the image's posterior sample z = μ + σ·ε), each [batch, 4, H/8, W/8] \
(posterior_noise may be [1, 4, H/8, W/8]). diffusers' StableDiffusionImg2ImgPipeline draws them from its one \
generator in the order posterior_noise, noise: g = torch.Generator().manual_seed(s); posterior_noise = \
torch.randn(shape, generator=g); noise = torch.randn(shape, generator=g). Either may be left out (then drawn \
from --seed). --vae-sample mode uses the posterior mean z = μ instead (recorded in the PNG's parameters)."
    };
}

macro_rules! img2img_examples {
    () => {
        "Examples:
  umbra img2img --model ~/models/stable-diffusion-v1-5 --image sketch.png --prompt \"a watercolour landscape\" --strength 0.6 --out wc.png
  umbra img2img --model ../shared/reference/tiny-sd-v1/pipeline --image in.png --prompt \"a cat\" --steps 8 --out out.png"
    };
}

macro_rules! inpaint_about {
    () => {
        "Stable Diffusion inpainting: repaint where --mask is white, keep the rest.

With a 9-channel inpainting UNet (e.g. stable-diffusion-inpainting) the UNet sees [x_t, mask, latents of the \
masked image]. With an ordinary 4-channel UNet, after every step the unmasked region is replaced by the \
original latents noised to the next step's level (and by the clean latents after the last step), so it comes \
back unchanged up to the VAE round trip (diffusers' StableDiffusionInpaintPipeline with a 4-channel UNet). The \
mask is a grayscale image, thresholded at 50%.

Reproducing a diffusers run: --init-noise FILE with `noise`, `posterior_noise` (the image's posterior ε) and \
`masked_posterior_noise` (the masked image's, used by 9-channel UNets), each [batch, 4, H/8, W/8]. \
StableDiffusionInpaintPipeline draws them from its one generator in the order posterior_noise (not drawn by a \
9-channel UNet at --strength 1), noise, masked_posterior_noise. --vae-sample mode uses posterior means instead."
    };
}

macro_rules! inpaint_examples {
    () => {
        "Examples:
  umbra inpaint --model ~/models/stable-diffusion-inpainting --image room.png --mask sofa-mask.png --prompt \"a red sofa\" --out sofa.png
  umbra inpaint --model ../shared/reference/tiny-sd-v1/pipeline --image in.png --mask m.png --prompt \"a cat\" --steps 8 --out out.png"
    };
}

macro_rules! tokenize_about {
    () => {
        "Print a prompt's CLIP token ids as JSON.

Output: {\"input_ids\": [77 ids: <|startoftext|>, at most 75 BPE tokens, <|endoftext|>, padding], \"tokens\": [BPE \
strings], \"truncated\": bool}. SD 1.x pads with <|endoftext|> (49407), SD 2.x with \"!\" (0), as the \
tokenizer's tokenizer_config.json says."
    };
}

macro_rules! tokenize_examples {
    () => {
        "Examples:
  umbra tokenize --model ../shared/reference/tiny-sd-v1/pipeline \"a photo of a cat\"
  umbra tokenize --model ~/models/stable-diffusion-v1-5/tokenizer \"A Photo OF a CAT!!\""
    };
}

/// Everything the three pipelines share.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    #[arg(long, help = "Checkpoint: a diffusers folder or a single CompVis .safetensors file", long_help = MODEL_HELP)]
    pub model: String,
    /// For a single-file checkpoint: a diffusers folder (configs + tokenizer/, no weights needed).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// What to generate.
    #[arg(long)]
    pub prompt: String,
    /// What to steer away from (the unconditional prompt of classifier-free guidance).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale s (diffusers' guidance_scale).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Guidance rescale φ in [0, 1] (diffusers' guidance_rescale; Lin et al. 2023 use 0.7 with zero-terminal-SNR
    /// models, whose images over-expose at large --guidance).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Seed of image 0; image i of a batch uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images to generate in one batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// ddim | euler | euler-a | dpm++2m | dpm++2m-karras | ddpm | heun (default: the checkpoint's scheduler, else ddim).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Image height in pixels (multiple of 8; default: the UNet's sample_size × 8).
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels (multiple of 8; default: the UNet's sample_size × 8).
    #[arg(long)]
    pub width: Option<usize>,
    /// A .safetensors file with one tensor of unit-variance noise [batch, 4, H/8, W/8] to start from, or
    /// (img2img, inpaint) named tensors noise, posterior_noise, masked_posterior_noise (see --help).
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Use the text encoder's layer `k` before the last (diffusers' clip_skip; A1111's "clip skip 2" is 1).
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    /// Also write OUT-preview.png: the model's x̂_0 decoded every K steps, side by side (first image).
    #[arg(long, value_name = "K")]
    pub preview: Option<usize>,
    /// Override the scheduler's prediction_type: epsilon | v_prediction | sample (SD 2.x 768-v single
    /// files without --config need v_prediction).
    #[arg(long)]
    pub prediction_type: Option<String>,
    /// Override the scheduler's timestep_spacing: leading | linspace | trailing (diffusers' names; default: the
    /// checkpoint's, else the solver's own). trailing starts at t = T − 1 (zero-terminal-SNR models).
    #[arg(long)]
    pub timestep_spacing: Option<String>,
    /// Output PNG; with --batch N > 1, OUT-0.png ... OUT-{N-1}.png.
    #[arg(long, default_value = "txt2img.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub weights: WeightsArgs,
    #[command(flatten)]
    pub adapters: super::lora::AdapterArgs,
}

/// Where a pipeline's weights run and how they are fetched: shared by txt2img/img2img/inpaint and `serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct WeightsArgs {
    /// cpu | cuda | cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 | f16 | bf16 for the UNet and text encoder (default: f32 on CPU, f16 on CUDA). The VAE stays in
    /// f32 when its config says force_upcast (SD's VAE overflows in f16). bf16 is CUDA only.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Hub downloads: the weight variant to fetch, e.g. fp16 (default: the fp32 safetensors).
    #[arg(long)]
    pub variant: Option<String>,
    /// Hub downloads: access token for gated/private repos (default: $HF_TOKEN, then the HF token file).
    #[arg(long)]
    pub hf_token: Option<String>,
}

impl WeightsArgs {
    /// The device and dtype (a dtype warning is printed), and the hub options for a download.
    pub fn resolve(&self) -> Result<(Device, DType, umbra_nn::loading::hub::HubOptions)> {
        let device = parse_device(&self.device)?;
        let (dtype, warning) = parse_dtype(self.dtype.as_deref(), &device)?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        let hub = umbra_nn::loading::hub::HubOptions {
            token: self.hf_token.clone(),
            variant: self.variant.clone(),
            offline: umbra_nn::loading::hub::offline_from_env(),
            progress: true,
        };
        Ok((device, dtype, hub))
    }
}

#[derive(clap::Args, Debug)]
#[command(long_about = txt2img_about!(), after_help = txt2img_examples!(), after_long_help = concat!(txt2img_about!(), "\n\n", txt2img_examples!()))]
pub struct Txt2ImgArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(clap::Args, Debug)]
#[command(long_about = img2img_about!(), after_help = img2img_examples!(), after_long_help = concat!(img2img_about!(), "\n\n", img2img_examples!()))]
pub struct Img2ImgArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The starting image (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// How much of the noise schedule to re-run, in (0, 1].
    #[arg(long, default_value_t = 0.75)]
    pub strength: f64,
    /// sample: the image's latents are a posterior sample z = μ + σ·ε (diffusers, A1111); mode: z = μ.
    #[arg(long, default_value = "sample", value_parser = parse_vae_sample)]
    pub vae_sample: VaeSample,
}

#[derive(clap::Args, Debug)]
#[command(long_about = inpaint_about!(), after_help = inpaint_examples!(), after_long_help = concat!(inpaint_about!(), "\n\n", inpaint_examples!()))]
pub struct InpaintArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The image to edit (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// Grayscale mask (PNG), white = repaint, black = keep.
    #[arg(long)]
    pub mask: PathBuf,
    /// 1: repaint from pure noise; lower keeps more of the original under the mask.
    #[arg(long, default_value_t = 1.0)]
    pub strength: f64,
    /// sample: the images' latents are posterior samples z = μ + σ·ε (diffusers, A1111); mode: z = μ.
    #[arg(long, default_value = "sample", value_parser = parse_vae_sample)]
    pub vae_sample: VaeSample,
}

#[derive(clap::Args, Debug)]
#[command(long_about = tokenize_about!(), after_help = tokenize_examples!(), after_long_help = concat!(tokenize_about!(), "\n\n", tokenize_examples!()))]
pub struct TokenizeArgs {
    /// A diffusers folder (uses tokenizer/), or a tokenizer folder (tokenizer.json or vocab.json + merges.txt).
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt.
    pub prompt: String,
}

// One place parses devices and dtypes: the library's (re-exported for `umbra sample diffusion` & co.).
pub use umbra_sample::pipelines::load::{parse_device, parse_dtype};

fn load(c: &CommonArgs) -> Result<(StableDiffusion, SchedulerConfig, SolverKind, String)> {
    let (device, dtype, hub) = c.weights.resolve()?;
    let overrides = SchedulerOverrides {
        prediction_type: c.prediction_type.as_deref().map(load::parse_prediction_type).transpose()?,
        timestep_spacing: c.timestep_spacing.as_deref().map(load::parse_timestep_spacing).transpose()?,
    };
    let solver = c.sampler.as_deref().map(load::parse_sd_solver).transpose()?;
    let src = PipelineSource { model: c.model.clone(), config_dir: c.config.clone(), device, dtype, hub };
    let t0 = Instant::now();
    let lp = load::load_pipeline(&src, &overrides)?;
    if !Path::new(&c.model).exists() {
        eprintln!("using {} from {}", c.model, lp.path.display());
    }
    eprintln!("loaded {} in {:.1}s", lp.path.display(), t0.elapsed().as_secs_f64());
    let mut sd = lp.sd;
    // Fused for the whole run (the process ends with it), so the FusedLoras is not kept for an unfuse.
    let (prompt, _fused) = super::lora::apply(&mut sd, &c.adapters, &c.prompt)?;
    for w in load::prompt_warnings(&sd, &[("--prompt", &prompt), ("--negative-prompt", &c.negative_prompt)])? {
        eprintln!("warning: {w}");
    }
    let solver = solver.unwrap_or(lp.default_solver);
    Ok((sd, lp.scheduler, solver, lp.name))
}

fn parse_vae_sample(s: &str) -> std::result::Result<VaeSample, String> {
    s.parse().map_err(|e: pipelines::PipelineError| e.to_string())
}

/// `--init-noise FILE`: one tensor (the initial noise) or the named noises of img2img/inpainting.
fn read_init_noise(path: &Path) -> Result<InitNoises> {
    let bytes = std::fs::read(path).with_context(|| format!("reading --init-noise {}", path.display()))?;
    Ok(InitNoises::from_safetensors(&bytes, &format!("--init-noise {}", path.display()))?)
}

/// Which pipeline the parameters are for (what of `--init-noise` it uses).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Task {
    Txt2img,
    Img2img,
    Inpaint,
}

fn params(
    c: &CommonArgs,
    sd: &StableDiffusion,
    solver: SolverKind,
    size: Option<(usize, usize)>,
    task: Task,
    vae_sample: VaeSample,
) -> Result<GenerationParams> {
    let f = sd.vae.downsample_factor();
    let default_side = sd.unet.config.sample_size.unwrap_or(64) * f;
    let (dw, dh) = size.unwrap_or((default_side, default_side));
    if c.preview == Some(0) {
        bail!("--preview K needs K ≥ 1");
    }
    let (height, width) = (c.height.unwrap_or(dh), c.width.unwrap_or(dw));
    let mut noises = InitNoises::default();
    if let Some(path) = c.init_noise.as_deref() {
        noises = read_init_noise(path)?;
        let what = format!("--init-noise {}", path.display());
        if task == Task::Txt2img && noises.noise.is_none() {
            bail!("{what} holds no `noise` tensor (txt2img starts from it)");
        }
        let unused: Vec<&str> = match task {
            Task::Txt2img => vec!["posterior_noise", "masked_posterior_noise"],
            Task::Img2img => vec!["masked_posterior_noise"],
            Task::Inpaint if sd.unet.config.in_channels == sd.vae.config.latent_channels => {
                vec!["masked_posterior_noise"]
            }
            Task::Inpaint => vec![],
        };
        for (name, _) in noises.named() {
            if unused.contains(&name) || (vae_sample == VaeSample::Mode && name != "noise") {
                eprintln!("warning: {what}: `{name}` is not used by this run");
            }
        }
        if height.is_multiple_of(f) && width.is_multiple_of(f) {
            noises.check(c.batch, (sd.vae.config.latent_channels, height / f, width / f), &what)?;
        }
    }
    let mut p = GenerationParams {
        prompt: super::lora::prompt_without_tags(&c.prompt)?,
        negative_prompt: c.negative_prompt.clone(),
        steps: c.steps,
        guidance_scale: c.guidance,
        guidance_rescale: c.guidance_rescale,
        seed: c.seed,
        batch: c.batch,
        height,
        width,
        solver,
        clip_skip: c.clip_skip,
        vae_sample,
        progress: true,
        preview_every: c.preview.unwrap_or(0),
        ..Default::default()
    };
    noises.apply(&mut p);
    Ok(p)
}

fn out_path(out: &Path, i: usize, n: usize, suffix: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let name = if n > 1 { format!("{stem}-{i}{suffix}.png") } else { format!("{stem}{suffix}.png") };
    out.with_file_name(name)
}

fn save(g: &Generation, c: &CommonArgs, p: &GenerationParams, model: &str, extra: &[(String, String)]) -> Result<()> {
    if let Some(dir) = c.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let rgbs = pipelines::to_rgb8(&g.images)?;
    for (i, rgb) in rgbs.iter().enumerate() {
        let seed = g.seeds[i];
        let text = ImageMeta::of(p, seed, model, extra).text_chunks();
        let path = out_path(&c.out, i, rgbs.len(), "");
        png_text::write_png_with_text(&path, p.width as u32, p.height as u32, rgb, &text)?;
        println!("wrote {} (seed {seed})", path.display());
    }
    if !g.previews.is_empty() {
        let strip: Vec<Tensor> =
            g.previews.iter().map(|(_, im)| im.narrow(0, 0, 1)).collect::<candle_core::Result<_>>()?;
        let strip = pipelines::hstack(&strip)?;
        let rgb = pipelines::to_rgb8(&strip)?.remove(0);
        let steps: Vec<String> = g.previews.iter().map(|(s, _)| (s + 1).to_string()).collect();
        let path = out_path(&c.out, 0, 1, "-preview");
        let text = vec![("preview_steps".to_string(), steps.join(","))];
        png_text::write_png_with_text(&path, (p.width * g.previews.len()) as u32, p.height as u32, &rgb, &text)?;
        println!("wrote {} (x̂_0 after steps {})", path.display(), steps.join(", "));
    }
    Ok(())
}

/// Load a PNG as `[1, C, H, W]` in [-1, 1] (RGB) or [0, 1] (mask, luma), resized to `size` if given.
fn load_image(path: &Path, size: Option<(usize, usize)>, mask: bool) -> Result<(Tensor, usize, usize)> {
    let img = image::open(path).with_context(|| format!("reading {} (PNG images are supported)", path.display()))?;
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let (w, h) = size.unwrap_or(((w0 / 8) * 8, (h0 / 8) * 8));
    if w == 0 || h == 0 {
        bail!("{} is {w0}x{h0}: too small (at least 8x8)", path.display());
    }
    let img = if (w, h) != (w0, h0) {
        img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Lanczos3)
    } else {
        img
    };
    let t = if mask {
        infotext::luma8_to_mask(&img.to_luma8().into_raw(), w, h)?
    } else {
        infotext::rgb8_to_tensor(&img.to_rgb8().into_raw(), w, h)?
    };
    Ok((t, w, h))
}

fn image_size(c: &CommonArgs) -> Option<(usize, usize)> {
    match (c.width, c.height) {
        (Some(w), Some(h)) => Some((w, h)),
        _ => None,
    }
}

pub fn txt2img(a: Txt2ImgArgs) -> Result<()> {
    let c = &a.common;
    let (sd, sched, solver, model) = load(c)?;
    let p = params(c, &sd, solver, None, Task::Txt2img, VaeSample::Sample)?;
    let t0 = Instant::now();
    let g = pipelines::txt2img(&sd, &sched, &p)?;
    eprintln!(
        "generated {} image(s) {}x{} in {:.1}s ({} steps, {solver})",
        p.batch,
        p.width,
        p.height,
        t0.elapsed().as_secs_f64(),
        p.steps
    );
    save(&g, c, &p, &model, &[])
}

pub fn img2img(a: Img2ImgArgs) -> Result<()> {
    let c = &a.common;
    let (sd, sched, solver, model) = load(c)?;
    let (image, w, h) = load_image(&a.image, image_size(c), false)?;
    let p = params(c, &sd, solver, Some((w, h)), Task::Img2img, a.vae_sample)?;
    let t0 = Instant::now();
    let g = pipelines::img2img(&sd, &sched, &p, &image, a.strength)?;
    eprintln!("generated {} image(s) {}x{} in {:.1}s", p.batch, p.width, p.height, t0.elapsed().as_secs_f64());
    let extra =
        [("strength".to_string(), a.strength.to_string()), ("init_image".to_string(), a.image.display().to_string())];
    save(&g, c, &p, &model, &extra)
}

pub fn inpaint(a: InpaintArgs) -> Result<()> {
    let c = &a.common;
    let (sd, sched, solver, model) = load(c)?;
    let (image, w, h) = load_image(&a.image, image_size(c), false)?;
    let (mask, _, _) = load_image(&a.mask, Some((w, h)), true)?;
    let p = params(c, &sd, solver, Some((w, h)), Task::Inpaint, a.vae_sample)?;
    let t0 = Instant::now();
    let g = pipelines::inpaint(&sd, &sched, &p, &image, &mask, a.strength)?;
    eprintln!("generated {} image(s) {}x{} in {:.1}s", p.batch, p.width, p.height, t0.elapsed().as_secs_f64());
    let extra = [
        ("strength".to_string(), a.strength.to_string()),
        ("init_image".to_string(), a.image.display().to_string()),
        ("mask".to_string(), a.mask.display().to_string()),
    ];
    save(&g, c, &p, &model, &extra)
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let dir = if a.model.join("tokenizer").is_dir() { a.model.join("tokenizer") } else { a.model.clone() };
    if !dir.is_dir() {
        bail!("--model {}: not a folder (pass a diffusers folder or its tokenizer/ folder)", a.model.display());
    }
    let tok = ClipTokenizer::from_dir(&dir)?;
    let ids = tok.encode(&a.prompt)?;
    let tokens = tok.tokens(&a.prompt)?;
    let out = serde_json::json!({
        "input_ids": ids,
        "tokens": tokens,
        "truncated": tok.is_truncated(&a.prompt)?,
    });
    println!("{out}");
    Ok(())
}
