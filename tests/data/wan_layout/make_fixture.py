# Builds a miniature of the real Wan2.1-T2V-1.3B + Self-Forcing folder from the golden tiny weights, in the real
# file formats: Self-Forcing's training checkpoint (torch.save of {'generator', 'critic', 'generator_ema'} dicts of
# 'model.'-prefixed OrderedDicts), Wan2.1_VAE.pth and the umT5 .pth (torch.save of OrderedDicts), Wan's
# config.json, and the tokenizer under google/umt5-xxl/. Run with Debian's python3-torch (1.13) from this folder:
#   /usr/bin/python3 make_fixture.py
import collections, json, os, shutil, struct

import torch


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
    out = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=dt[info["dtype"]]).reshape(info["shape"])
        out[name] = t.clone()
    return out


golden = "../golden"
dit = load_safetensors(f"{golden}/dit_weights.safetensors")
vae = load_safetensors(f"{golden}/vae_weights.safetensors")
t5 = load_safetensors(f"{golden}/t5_weights.safetensors")

os.makedirs("model/google/umt5-xxl", exist_ok=True)
gen = collections.OrderedDict(("model." + k, v) for k, v in dit.items())
# The EMA copy is what inference uses by default: make it differ so tests can tell which one was loaded.
ema = collections.OrderedDict(("model._fsdp_wrapped_module." + k, v * 0.5 if k.endswith("head.head.weight") else v)
                              for k, v in dit.items())
critic = collections.OrderedDict(("model." + k, torch.zeros(1)) for k in list(dit)[:2])
torch.save({"generator": gen, "critic": critic, "generator_ema": ema}, "model/self_forcing_dmd.pt")
torch.save(vae, "model/Wan2.1_VAE.pth")
torch.save(t5, "model/models_t5_umt5-xxl-enc-bf16.pth")
cfg = json.load(open(f"{golden}/dit_weights.json"))["config"]
cfg = dict(cfg, _class_name="WanModel", _diffusers_version="0.30.0")
json.dump(cfg, open("model/config.json", "w"), indent=2)
shutil.copy("../toy_model/tokenizer.model", "model/google/umt5-xxl/spiece.model")
