"""Loss and gradients of `InheritanceLoss.sums` with a bias-free linear head over three chunks, printed in full
precision, to compare two versions of the code bit for bit (hand-run: run it under each, diff the output)."""

import torch

from kinherit.inheritance import InheritanceLoss
from kinherit.inheritance.targets import Target

torch.manual_seed(0)
vocab, hidden_size, n = 8192, 64, 3000
head = torch.nn.Linear(hidden_size, vocab, bias=False)
hidden = torch.randn(n, hidden_size, requires_grad=True)
labels, teacher = torch.randint(0, vocab, (n,)), torch.randn(n, vocab)
for compiled in (False, True):
    for taught in (False, True):
        head.zero_grad()
        hidden.grad = None
        loss = InheritanceLoss(temperature=2.0, chunk_size=1024, vocab_size=vocab, compiled=compiled)

        def targets(chunk):
            return Target.from_logits([teacher[chunk]], [1.0], 2.0)

        sums = loss.sums(hidden, labels, 0.4 if taught else 0.0, targets if taught else None, head)
        sums.total.backward()
        print(compiled, taught, repr(sums.total.item()), repr(hidden.grad.double().sum().item()),
              repr(head.weight.grad.double().abs().sum().item()))
