# Loads an `umbra train ldm` pipeline folder with diffusers' StableDiffusionPipeline.from_pretrained unchanged,
# runs DDIM from given latents, and writes the image + latents for comparison with `umbra txt2img --init-noise`.
import sys, torch, numpy as np
from diffusers import StableDiffusionPipeline, DDIMScheduler
from safetensors.torch import save_file
from PIL import Image
torch.set_num_threads(1)
d, out = sys.argv[1], sys.argv[2]
pipe = StableDiffusionPipeline.from_pretrained(d, safety_checker=None, requires_safety_checker=False)
print("loaded:", type(pipe).__name__, "unet", sum(p.numel() for p in pipe.unet.parameters()), "text", sum(p.numel() for p in pipe.text_encoder.parameters()), "scheduler", type(pipe.scheduler).__name__, "scaling", pipe.vae.config.scaling_factor)
g = torch.Generator().manual_seed(0)
lat = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=g)
save_file({"noise": lat.contiguous()}, f"{out}/noise.safetensors")
img = pipe("a red circle above a blue square", height=32, width=32, num_inference_steps=10, guidance_scale=4.0, latents=lat, output_type="np").images[0]
Image.fromarray((img * 255).round().astype(np.uint8)).save(f"{out}/diffusers.png")
print("ok", img.shape)
