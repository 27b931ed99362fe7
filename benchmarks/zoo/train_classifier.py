"""Trains the classifier of a reference model on that model's data and saves it beside the model in
the zoo directory (classifier.safetensors), with its accuracy on fresh held-out data.

    python -m benchmarks.zoo.train_classifier pixart-scenes
    python -m benchmarks.zoo.train_classifier unet-digits --ship   # also replace the shipped one

Procedural data (scenes, clips, photo crops) gives fresh examples each batch, and the held-out
check draws new ones from another seed; the 1,797 digits are split, the last fifth held out.
Inputs get a little Gaussian noise so that near-data samples are judged as the data would be.
"""

import argparse
import json
import shutil
import time

import torch
import torch.nn.functional as F

from benchmarks.zoo.sources import data_source

from cachekern import reference_models
from cachekern.reference_models import classifier, store

SETTINGS = dict(iterations=1500, batch=256, lr=2e-3, input_noise=0.05, held_out=2048)
HELD_OUT_DIGITS = 0.2


def digits_split(data, generator):
    """(train batch drawer, held-out images, labels): a fixed fifth of the digits held out."""
    order = torch.randperm(len(data.images), generator=generator).to(data.images.device)
    cut = int(len(order) * (1 - HELD_OUT_DIGITS))
    train_index, test_index = order[:cut], order[cut:]

    def batch(n, g):
        pick = train_index[torch.randint(len(train_index), (n,), generator=g).to(order.device)]
        return data.images[pick], data.labels[pick]
    return batch, data.images[test_index], data.labels[test_index]


def train(name, *, iterations=None, device=None, cache_dir=None, seed=0, ship=False):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    iterations = iterations or SETTINGS["iterations"]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = data_source(name, device)
    recipe = reference_models.RECIPES[name]
    if name == "unet-digits":
        draw, test_images, test_labels = digits_split(data, generator)
    else:
        draw = data.batch
        test_images, test_labels = data.batch(SETTINGS["held_out"],
                                              torch.Generator().manual_seed(seed + 1))
    example, _ = draw(2, generator)
    in_channels = example.shape[1] * (example.shape[2] if example.dim() == 5 else 1)
    net = classifier.Classifier(in_channels, recipe.NUM_CLASSES).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=SETTINGS["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, SETTINGS["lr"], total_steps=iterations)
    start = time.perf_counter()
    for i in range(iterations):
        images, labels = draw(SETTINGS["batch"], generator)
        noisy = images + SETTINGS["input_noise"] * torch.randn(images.shape,
                                                               generator=generator).to(device)
        loss = F.cross_entropy(net(noisy), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (i + 1) % 250 == 0:
            print(f"{name} classifier {i + 1}/{iterations} loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(test_images[lo:lo + 512]).argmax(1)
                               for lo in range(0, len(test_images), 512)])
    accuracy = (predicted == test_labels).float().mean().item()
    meta = dict(name=name, iterations=iterations, seed=seed, held_out_accuracy=round(accuracy, 4),
                held_out=len(test_labels), train_seconds=round(seconds, 1))
    path = classifier.save(classifier.zoo_path(name, cache_dir), net, meta)
    (path.parent / "classifier_log.json").write_text(json.dumps(meta, indent=1))
    print(f"saved {path}: held-out accuracy {accuracy:.4f} on {len(test_labels)}, {seconds:.0f} s")
    if ship:
        shipped = classifier.shipped_path(name)
        shutil.copyfile(path, shipped)
        store.record_hash(shipped)
        print(f"shipped as {shipped}, sha256 {store.sha256_of(shipped)}")
    return path, accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(reference_models.RECIPES))
    parser.add_argument("--iterations", type=int, help=f"default {SETTINGS['iterations']}")
    parser.add_argument("--device", help="default: cuda if present")
    parser.add_argument("--cache-dir", help="zoo directory (default: $CACHEKERN_ZOO or "
                                            "~/.cache/cachekern/zoo)")
    parser.add_argument("--ship", action="store_true",
                        help="also replace the classifier shipped in cachekern/reference_models/")
    args = parser.parse_args(argv)
    train(args.name, iterations=args.iterations, device=args.device, cache_dir=args.cache_dir,
          ship=args.ship)


if __name__ == "__main__":
    main()
