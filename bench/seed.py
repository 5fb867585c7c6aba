"""The seed tutorial's way of doing things, kept only to measure against.

Per item: PIL open, Grayscale(3), Resize((s, s)), ToTensor, Normalize; DataLoader with
num_workers=0; feature extraction that runs the frozen backbone forward every epoch in train mode.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class SeedDataset(Dataset):
    def __init__(self, paths: list[str], labels: list[int], size: int, mean, std):
        self.paths, self.labels = paths, labels
        self.t = transforms.Compose(
            [
                transforms.Grayscale(3),
                transforms.Resize((size, size)),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return self.t(Image.open(self.paths[i])), self.labels[i]


def seed_loader(paths, labels, size, mean, std, batch_size=32, shuffle=True, seed=0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ds = SeedDataset(paths, labels, size, mean, std)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=g)


def seed_fe_train(
    model: nn.Module, head: nn.Module, train: DataLoader, val: DataLoader, epochs: int, lr=1e-3
):
    """The seed's feature extraction: model.train() (frozen BatchNorm keeps updating), the whole
    network forward for every batch of every epoch. Returns the last epoch's validation accuracy."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-5)
    loss_fn = nn.CrossEntropyLoss()
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
                n += len(y)
        acc = correct / n
    return acc
