"""LSTM, step by step (differentiable through time), as ONNX defines it: gates in i, o, f, c order,
optional peepholes, forward, reverse or bidirectional, either layout."""

from __future__ import annotations

import torch

from graphopt.train.ops import Node, op


@op("LSTM")
def lstm(node: Node, x, weight, recurrence, bias=None, lengths=None, initial_h=None, initial_c=None, peephole=None):
    activations = [name.lower() for name in node.get("activations") or []]
    if activations and activations != ["sigmoid", "tanh", "tanh"] * (len(activations) // 3):
        raise node.unsupported(f"activations {node.get('activations')}")
    if node.get("clip") is not None or node.get("input_forget", 0):
        raise node.unsupported("clip or input_forget")
    layout = node.get("layout", 0)
    x = x.transpose(0, 1) if layout else x  # [seq, batch, input]
    steps, batch = x.shape[:2]
    if lengths is not None and bool((lengths != steps).any()):
        raise node.unsupported("sequence_lens shorter than the sequence")
    size = node.get("hidden_size") or recurrence.shape[-1]
    directions = weight.shape[0]
    reverse = node.get("direction", "forward") == "reverse"
    ys, hs, cs = [], [], []
    for direction in range(directions):
        h = x.new_zeros(batch, size) if initial_h is None else initial_h[direction]
        c = x.new_zeros(batch, size) if initial_c is None else initial_c[direction]
        b = 0 if bias is None else bias[direction, :4 * size] + bias[direction, 4 * size:]
        p = None if peephole is None else peephole[direction].split(size)
        inputs = torch.matmul(x, weight[direction].T) + b  # all steps at once
        order = range(steps - 1, -1, -1) if reverse or direction == 1 else range(steps)
        outputs = [None] * steps
        for t in order:
            i, o, f, g = (inputs[t] + h @ recurrence[direction].T).split(size, -1)
            if p is not None:
                i, f = i + p[0] * c, f + p[2] * c
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            o = o + p[1] * c if p is not None else o
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs[t] = h
        ys.append(torch.stack(outputs))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, 1)  # [seq, directions, batch, hidden]
    y_h, y_c = torch.stack(hs), torch.stack(cs)
    if layout:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y, y_h, y_c)[:max(node.outputs, 1)]
