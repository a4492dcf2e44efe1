"""A small network learns a small task on the CPU within seconds."""

import numpy as np

import nbcnn


def bars(n, rng):
    """8x8 greyscale images holding a horizontal (class 0) or vertical (class 1) bar, in noise."""
    labels = rng.integers(0, 2, n)
    x = 0.3 * rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    pos = rng.integers(1, 7, n)
    for i in range(n):
        if labels[i] == 0:
            x[i, 0, pos[i], 1:7] += 1.0
        else:
            x[i, 0, 1:7, pos[i]] += 1.0
    return x, labels


def test_small_network_learns_bars_well_above_chance():
    nbcnn.manual_seed(0)
    rng = np.random.default_rng(0)
    net = nbcnn.Sequential(
        nbcnn.Conv2d(1, 8, 3, padding=1), nbcnn.ReLU(), nbcnn.LocalResponseNorm(3, 5e-4, 0.75, 2.0),
        nbcnn.MaxPool2d(3, 2), nbcnn.Flatten(), nbcnn.Dropout(0.2), nbcnn.Linear(8 * 3 * 3, 2))
    opt = nbcnn.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(60):
        x, y = bars(32, rng)
        loss, dlogits = nbcnn.softmax_cross_entropy(net(nbcnn.asarray(x)), nbcnn.asarray(y))
        net.backward(dlogits)
        opt.step()
        opt.zero_grad()
        losses.append(loss)
    x, y = bars(500, rng)
    accuracy = (nbcnn.to_numpy(net.eval()(nbcnn.asarray(x))).argmax(1) == y).mean()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert accuracy > 0.9
