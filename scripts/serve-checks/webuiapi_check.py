"""webuiapi (unchanged, from PyPI) against `umbra serve`: txt2img, img2img, inpaint, progress, interrupt,
samplers, schedulers, options (model switch)."""
import sys, time, threading, json
import webuiapi
from PIL import Image
port = int(sys.argv[1])
api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=4)
out = {}
samplers = [s["name"] for s in api.get_samplers()]
out["samplers"] = samplers
out["schedulers"] = [s["label"] for s in api.get_schedulers()] if hasattr(api, "get_schedulers") else None
out["models"] = api.util_get_model_names()
r = api.txt2img(prompt="a photo of a cat", negative_prompt="blurry", seed=42, width=64, height=64, batch_size=2,
                sampler_name="DPM++ 2M Karras", cfg_scale=7, steps=6)
out["txt2img"] = dict(n=len(r.images), size=r.images[0].size, all_seeds=r.info["all_seeds"],
                      params=r.images[0].info.get("parameters", "")[:80], parameters_steps=r.parameters["steps"])
assert len(r.images) == 2 and r.info["all_seeds"] == [42, 43]
init = Image.new("RGB", (64, 64), (200, 30, 30))
r = api.img2img(images=[init], prompt="a cat", denoising_strength=0.6, seed=1, steps=5)
out["img2img"] = dict(n=len(r.images), size=r.images[0].size, seed=r.info["seed"])
mask = Image.new("L", (64, 64), 0); mask.paste(255, (0, 0, 32, 64))
r = api.img2img(images=[init], mask_image=mask, prompt="a cat", denoising_strength=1.0, seed=2, steps=5, inpainting_fill=1)
out["inpaint"] = dict(n=len(r.images), size=r.images[0].size)
# Options: model switch.
opts = api.get_options()
out["options_before"] = opts["sd_model_checkpoint"]
names = out["models"]
if len(names) > 1:
    api.util_set_model(names[1])
    out["after_switch"] = api.get_options()["sd_model_checkpoint"]
    r = api.txt2img(prompt="x", width=32, height=32, steps=2, seed=3)
    out["switched_txt2img_model"] = r.info["sd_model_name"]
    api.util_set_model(names[0])
    out["switched_back"] = api.get_options()["sd_model_checkpoint"]
api.set_options({"CLIP_stop_at_last_layers": 2})
out["clip_skip_opt"] = api.get_options()["CLIP_stop_at_last_layers"]
api.set_options({"CLIP_stop_at_last_layers": 1})
# Progress and interrupt during a long job.
res = {}
def long():
    res["r"] = api.txt2img(prompt="a long job", width=64, height=64, steps=150, seed=5)
t = threading.Thread(target=long); t.start()
prog = None
for _ in range(600):
    p = api.get_progress()
    if p["state"]["sampling_step"] >= 6 and p.get("current_image"):
        prog = p; break
    time.sleep(0.02)
out["progress"] = dict(progress=round(prog["progress"], 3), step=prog["state"]["sampling_step"],
                       steps=prog["state"]["sampling_steps"], job_count=prog["state"]["job_count"],
                       eta=round(prog["eta_relative"], 2), current_image=len(prog["current_image"]))
api.interrupt()
t.join()
r = res["r"]
out["interrupt"] = dict(n=len(r.images), size=r.images[0].size if r.images else None, interrupted=r.info.get("interrupted"),
                        all_seeds=r.info["all_seeds"])
out["progress_after"] = api.get_progress()["state"]["job_count"]
print(json.dumps(out))
