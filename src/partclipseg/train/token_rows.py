"""Training a token-embedding table on the rows the training prompts read, and no others.

A part-training run encodes one fixed vocabulary every step, so the text tower's token table
(``PartSegmentationModel.prompt_token_table``) gets a gradient on the token ids of those prompts only:
the toy model's table holds 49408 x 64 = 3.2 million entries, of which its 20 prompts read 24 rows.
Training the whole table costs every step a dense [49408, 64] gradient (zero-filled, ~7 ms on one
thread), an AdamW update and a norm over it, ~10 ms of a ~150 ms toy step on one thread; every other
row stays exactly as it was (its gradient and both AdamW moments are zero, and embedding tables have
no weight decay, ``weight_decay_embed`` 0; a recipe with ``weight_decay_embed`` > 0 shrinks every row
every step, so part training then trains the whole table).

``TrainedTokenRows`` trains just those rows: the table is frozen, the optimizer holds ``weight`` [R, D]
(a copy of the table's ``rows``), and a forward hook on the embedding module puts ``weight``'s rows in
place of the table's at those token ids (any other id still reads the table, so evaluation with
another vocabulary during training is unchanged). After each optimizer step ``write_back`` copies
``weight`` into the table, so that the model saved, evaluated or resumed is the same model as before.
The AdamW update is elementwise, so the trained rows move as they did when the whole table trained,
and the gradient-norm clip sums the same non-zero values. Measured on CPU with one process and with two
(``tests/test_token_rows.py``): the same weights bit for bit. Where a kernel groups its sums by position
(the CUDA norm's chunks), the clip factor may differ in its last bits.

Checkpoints keep their format: ``full_optimizer_state`` writes the rows' AdamW moments into
table-sized tensors (zero elsewhere, as the whole-table run has them) and ``rows_optimizer_state``
takes the rows back out when resuming, from this or an earlier version's ``trainer.pt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TrainedTokenRows:
    """The trained rows of a token table (see the module docstring)."""

    name: str  # the table's parameter name, e.g. "text.token_embedding.weight"
    table: nn.Parameter  # [V, D], frozen while the rows train
    rows: torch.Tensor  # [R] long, sorted unique token ids of the training prompts
    weight: nn.Parameter  # [R, D] the trained rows: what the optimizer holds in the table's place
    lookup: torch.Tensor  # [V] long: token id -> its index in ``rows``, -1 for every other id
    hook: Any = None  # the forward hook's handle

    @classmethod
    def attach(cls, model: nn.Module, input_ids: torch.Tensor) -> "TrainedTokenRows | None":
        """Freeze the model's ``prompt_token_table`` (when it trains) and train its rows at ``input_ids``
        [P, L] instead; ``None`` when the model has no such table or it does not train."""
        name = getattr(type(model), "prompt_token_table", None)
        if name is None:
            return None
        table = model.get_parameter(name)
        if not table.requires_grad:
            return None
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"{name} is not an nn.Embedding's weight")
        if module.padding_idx is not None or module.max_norm is not None or module.scale_grad_by_freq \
                or module.sparse:
            return None  # the substitute lookup below is a plain one: such a table trains whole
        rows = torch.unique(input_ids).to(table.device)
        lookup = torch.full((table.shape[0],), -1, dtype=torch.long, device=table.device)
        lookup[rows] = torch.arange(rows.numel(), device=table.device)
        table.requires_grad_(False)
        weight = nn.Parameter(table.detach()[rows].clone())
        trained = cls(name, table, rows, weight, lookup)
        trained.hook = module.register_forward_hook(trained._substitute)
        return trained

    def _substitute(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """The embedding's output [.., D] with ``weight``'s rows at the trained token ids."""
        where = self.lookup[args[0]]
        trained = F.embedding(where.clamp(min=0), self.weight)
        return torch.where((where >= 0).unsqueeze(-1), trained, output)

    def refresh(self) -> None:
        """``weight`` from the table (after the table was loaded or broadcast)."""
        with torch.no_grad():
            self.weight.copy_(self.table[self.rows])

    def write_back(self) -> None:
        """The table's rows from ``weight`` (after each optimizer step)."""
        with torch.no_grad():
            self.table.index_copy_(0, self.rows, self.weight)

    def all_reduce(self, world_size: int) -> None:
        """Average ``weight``'s gradient over the processes (after ``backward``, before clipping) as DDP
        averages the parameters it holds (the table is not one of them): divided by the process count,
        then summed."""
        if self.weight.grad is None:
            raise RuntimeError(f"{self.name} got no gradient: it is not read by the training prompts")
        self.weight.grad.div_(world_size)
        torch.distributed.all_reduce(self.weight.grad)

    def detach(self) -> None:
        """Remove the hook and let the table train again (the end of a run, or a run stopped by an error;
        a second call changes nothing)."""
        if self.hook is None:
            return
        self.write_back()
        self.hook.remove()
        self.hook = None
        self.table.requires_grad_(True)

    # ------------------------------------------------------------------ optimizer state in checkpoints
    def _state_index(self, optimizer: torch.optim.Optimizer) -> int:
        """``weight``'s key in ``optimizer.state_dict()["state"]`` (params numbered in group order)."""
        flat = [p for group in optimizer.param_groups for p in group["params"]]
        return next(i for i, p in enumerate(flat) if p is self.weight)

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """``optimizer.state_dict()`` with ``weight``'s moments as table-sized tensors (zero off the rows)."""
        state = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: replaced, not edited
        index = self._state_index(optimizer)
        if index in state["state"]:
            state["state"] = {**state["state"], index: {key: self._full(value)
                                                        for key, value in state["state"][index].items()}}
        return state

    def _full(self, value: Any) -> Any:
        if not (torch.is_tensor(value) and value.shape == self.weight.shape):
            return value
        full = value.new_zeros(self.table.shape)
        full[self.rows.to(value.device)] = value
        return full

    def rows_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        """A saved optimizer state (table-sized moments) with ``weight``'s rows taken out, for
        ``optimizer.load_state_dict``."""
        index = self._state_index(optimizer)
        if index in state["state"]:
            entry = {key: value[self.rows.to(value.device)]
                     if torch.is_tensor(value) and value.shape == self.table.shape else value
                     for key, value in state["state"][index].items()}
            state = {**state, "state": {**state["state"], index: entry}}
        return state
