"""Each reference model's classifier (cachekern.reference_models.classifier): the shipped ones are
hash-checked and recognise fresh data of their model; the file round trip is exact up to fp16."""

import pytest
import torch

from benchmarks.zoo.sources import data_source

from cachekern import reference_models
from cachekern.reference_models import classifier, store

NAMES = sorted(reference_models.RECIPES)


@pytest.mark.parametrize("name", NAMES)
def test_every_model_ships_a_classifier_that_recognises_its_data(name, monkeypatch):
    monkeypatch.delenv("CACHEKERN_ZOO", raising=False)
    path = classifier.shipped_path(name)
    assert store.sha256_of(path) == store.shipped_hashes()[path.name]
    net = classifier.load(name)
    assert net.config["num_classes"] == reference_models.RECIPES[name].NUM_CLASSES
    # fresh data (seeds the training never drew from); digits: every digit, train and held out
    images, labels = data_source(name, "cpu").batch(96, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        accuracy = (net(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.85, accuracy
    assert net.features(images).shape == (96, 4 * net.config["width"])


def test_round_trip_and_bad_input(tmp_path):
    torch.manual_seed(0)
    net = classifier.Classifier(in_channels=27, num_classes=5).eval()
    classifier.save(classifier.zoo_path("wan-motion", tmp_path), net, dict(name="wan-motion"))
    loaded = classifier.load("wan-motion", cache_dir=tmp_path)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.half().float())
    clips = torch.randn(3, 3, 9, 32, 32)
    assert torch.equal(net(clips), loaded(clips))
    with pytest.raises(ValueError, match="images: expected 27 channels"):
        loaded(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="not 'pixart-scenes'"):
        classifier.save(classifier.zoo_path("pixart-scenes", tmp_path), net,
                        dict(name="wan-motion"))
        classifier.load("pixart-scenes", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="train_classifier flux-photos"):
        classifier.load("flux-photos", cache_dir=tmp_path)
