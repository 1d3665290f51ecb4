//! `--lora FILE[:W]`, `--lora-dir DIR` and `--embedding FILE[:TOKEN]` for txt2img / img2img / inpaint: argument
//! parsing only; reading and fusing the adapters is `umbra_nn::adapters`.

use std::path::PathBuf;

use anyhow::Result;
use umbra_nn::adapters::{self, FusedLoras, LoraAdapter, TextualInversion};
use umbra_nn::loading::StableDiffusion;

/// Adapters: LoRAs and textual-inversion embeddings.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AdapterArgs {
    /// A LoRA to fuse into the model, with its weight (multiplier, default 1): a kohya (lora_unet_* / lora_te_*)
    /// or diffusers/PEFT (pytorch_lora_weights.safetensors) file. Repeatable; scale = W × alpha / rank.
    #[arg(long = "lora", value_name = "FILE[:W]")]
    pub lora: Vec<String>,
    /// Folder of LoRAs for A1111-style prompt tags: `<lora:NAME:W>` in --prompt fuses DIR/NAME.safetensors with
    /// weight W (the tag is removed from the prompt before tokenizing).
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// A textual-inversion embedding (diffusers' learned_embeds.safetensors, or A1111's emb_params /
    /// string_to_param), optionally with the word that triggers it (default: the file's token, else its
    /// name). Repeatable.
    #[arg(long = "embedding", value_name = "FILE[:TOKEN]")]
    pub embedding: Vec<String>,
}

/// Adds the embeddings and fuses the LoRAs of `args` and of the prompt's tags into `sd`, printing what matched;
/// returns the prompt without its tags.
pub fn apply(sd: &mut StableDiffusion, args: &AdapterArgs, prompt: &str) -> Result<(String, FusedLoras)> {
    for e in &args.embedding {
        let (file, token) = adapters::parse_file_token(e);
        let ti = TextualInversion::load(&file, token.as_deref())?;
        let ids = ti.apply(&mut sd.tokenizer, &mut sd.text_encoder)?;
        eprintln!("embedding {}: token {:?}, {} vector(s), ids {ids:?}", file.display(), ti.token, ti.num_vectors());
    }
    let mut fixed = Vec::new();
    for l in &args.lora {
        let (file, w) = adapters::parse_file_weight(l)?;
        fixed.push((LoraAdapter::load(&file)?, w));
    }
    let (clean, fused) = adapters::fuse_prompt_loras(sd, prompt, &fixed, args.lora_dir.as_deref())?;
    for r in &fused.reports {
        eprintln!("{}", r.summary());
    }
    Ok((clean, fused))
}

/// The prompt without its `<lora:…>` tags.
pub fn prompt_without_tags(prompt: &str) -> Result<String> {
    Ok(adapters::parse_lora_tags(prompt)?.0)
}

const TRAIN_EXAMPLES: &str = "Examples:
  # teach a shapes pipeline a new word from a folder of captioned images (image.png + image.txt)
  umbra train lora --model runs/ldm-shapes/pipeline --data folder:data/teal --out runs/lora-teal \\
      --steps 400 --rank 4 --prompts 'a teal circle|a teal square'
  # attention + feed-forward + resnet convs, and the text encoder too
  umbra train lora --model M --data folder:DIR --targets to_q,to_k,to_v,to_out.0,ff,conv --train-text-encoder
  # use it
  umbra txt2img --model M --lora runs/lora-teal/lora_kohya.safetensors:0.8 --prompt 'a teal circle'";

/// `umbra train lora`.
#[derive(clap::Args, Debug)]
#[command(after_help = TRAIN_EXAMPLES)]
pub struct TrainArgs {
    /// The base diffusers pipeline folder (its UNet and text encoder stay frozen).
    #[arg(long)]
    pub model: PathBuf,
    /// Captioned data: folder:DIR (images with .txt captions) | shapes | shapes:N | shapes64.
    #[arg(long)]
    pub data: String,
    /// Render / resize the images to this side (0: the pipeline's sample_size × 8).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    #[arg(long, default_value = "runs/lora")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 500)]
    pub steps: u64,
    /// Stop (and save) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its checkpoint (--steps may raise the budget).
    #[arg(long)]
    pub resume: bool,
    /// LoRA rank r.
    #[arg(long, default_value_t = 4)]
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank; default: the rank, scale 1).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// UNet layers, comma-separated module-name suffixes; `ff` = ff.net.0.proj,ff.net.2, `conv` = conv1,conv2,conv_shortcut.
    #[arg(long, value_delimiter = ',', default_value = "to_q,to_k,to_v,to_out.0")]
    pub targets: Vec<String>,
    /// Also adapt the text encoder's attention (q_proj, k_proj, v_proj, out_proj).
    #[arg(long)]
    pub train_text_encoder: bool,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// min-SNR-γ loss weighting (Hang et al. 2023); 5 is the paper's choice.
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// EMA of the LoRA weights (off by default).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Probability of training on the empty prompt.
    #[arg(long, default_value_t = 0.0)]
    pub cond_drop: f64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 25)]
    pub log_every: u64,
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Render the validation prompts every this many steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Validation prompts, `|`-separated.
    #[arg(long)]
    pub prompts: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub val_steps: usize,
    #[arg(long, default_value_t = 4.0)]
    pub val_guidance: f64,
    /// Training examples to use (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn train(a: TrainArgs) -> Result<()> {
    use anyhow::Context;
    use umbra_data::{load_captioned, Split};
    use umbra_train::lora_trainer::{self, LoraTrainConfig, LoraTrainer};
    let dev = super::sd::parse_device(&a.device)?;
    let cfg = if a.resume {
        let ck = umbra_train::Checkpoint::load_kind(&a.out, &candle_core::Device::Cpu, &[lora_trainer::KIND])
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        ck.config_as::<LoraTrainConfig>()?
    } else {
        let size = if a.size > 0 {
            a.size
        } else {
            let u = umbra_nn::loading::read_config::<umbra_nn::unet::Config>(&a.model.join("unet/config.json"))
                .with_context(|| format!("--model {}: reading unet/config.json", a.model.display()))?;
            u.sample_size.unwrap_or(8) * 8
        };
        let mut c = LoraTrainConfig::new(&a.model.display().to_string(), &a.data, size, a.steps, a.seed);
        c.data_seed = a.data_seed;
        c.limit = a.limit;
        c.rank = a.rank;
        c.alpha = a.alpha.unwrap_or(a.rank as f64);
        c.targets = a
            .targets
            .iter()
            .flat_map(|t| match t.as_str() {
                "ff" => lora_trainer::FF_TARGETS.iter().map(|s| s.to_string()).collect(),
                "conv" => lora_trainer::CONV_TARGETS.iter().map(|s| s.to_string()).collect(),
                o => vec![o.to_string()],
            })
            .collect();
        if a.train_text_encoder {
            c.text_targets = lora_trainer::TEXT_TARGETS.iter().map(|s| s.to_string()).collect();
        }
        c.lr = a.lr;
        c.min_snr_gamma = a.min_snr_gamma;
        c.ema_decay = a.ema_decay;
        c.cond_drop = a.cond_drop;
        c.batch_size = a.batch_size;
        c.log_every = a.log_every;
        c.checkpoint_every = a.checkpoint_every;
        c.eval_every = a.eval_every;
        c.val_steps = a.val_steps;
        c.val_guidance = a.val_guidance;
        c.validation_prompts = a
            .prompts
            .as_deref()
            .map(|p| p.split('|').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        c
    };
    let mut ds = load_captioned(&cfg.dataset, cfg.image_size, Split::Train, cfg.data_seed)
        .with_context(|| format!("loading --data {}", cfg.dataset))?;
    if cfg.limit > 0 && cfg.limit < ds.len() {
        ds = ds.take(cfg.limit);
    }
    let all: Vec<usize> = (0..ds.len()).collect();
    let images = ds.images.batch(&all, &dev)?;
    let mut t = if a.resume {
        let t = LoraTrainer::resume(&a.out, &images, &ds.captions, &dev, Some(a.steps))?;
        eprintln!("resuming {} at step {} of {}", a.out.display(), t.step, t.config.steps);
        t
    } else {
        LoraTrainer::new(cfg, &images, &ds.captions, &dev)?
    };
    let (nu, nt) = (
        t.slots.iter().filter(|s| s.component == adapters::Component::Unet).count(),
        t.slots.iter().filter(|s| s.component == adapters::Component::TextEncoder).count(),
    );
    eprintln!(
        "LoRA on {} ({} captioned images): rank {}, alpha {}, {nu} UNet + {nt} text-encoder layers, {} trained parameters; \
         {} steps of batch {}, lr {}",
        t.config.model,
        ds.len(),
        t.config.rank,
        t.config.alpha,
        t.num_parameters(),
        t.config.steps,
        t.config.batch_size,
        t.config.lr
    );
    let mut lcfg = t.config.loop_config();
    lcfg.max_minutes = a.max_minutes;
    lcfg.show_progress = true;
    let s = umbra_train::trainer::Trainer::new(lcfg).run(&mut t, ds.len(), &a.out)?;
    eprintln!("done: step {} in {:.1} s, last loss {:.4}", s.steps, s.seconds, s.last_loss);
    println!("kohya LoRA:     {}", a.out.join(lora_trainer::KOHYA_FILE).display());
    println!("diffusers LoRA: {}", a.out.join(lora_trainer::PEFT_FILE).display());
    println!("checkpoint:     {}", a.out.join("checkpoint.safetensors").display());
    Ok(())
}
