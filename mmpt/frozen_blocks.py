"""The text tower's frozen leading blocks, encoded once per class list (`TextOptions.cache_frozen_blocks`).

A pass whose schedule puts nothing into blocks 0..s-1 (no shallow prompt; no deep prompt, removal or adapter
before layer s: MMRL's representation tokens enter at block 6, MMA's adapters at block 5) feeds block s hidden
states that depend on the token ids and the frozen weights only: they are the same at every training step. The
encoder computes them once, without autograd, and reuses them while the class sentences' token ids, the weights
(identity, in-place version, dtype, device, requires_grad), the autocast state and the pass's layout (plain /
shared prefix, chunk, truncation) are unchanged. The same operations run on the same shapes either way, so the
features and their gradients are bit-identical to the full pass; nothing learnable runs before block s, so no
gradient is lost. The states are plain attributes (no buffer): never saved in a checkpoint.
"""
import torch

from mmpt.blocks import at_layer


def first_input_layer(schedule, n_layers):
    """The first layer whose block receives something from the schedule (0: a shallow prompt or an adapter on
    block 0); n_layers when the schedule is empty."""
    for layer in range(n_layers):
        if at_layer(schedule.prompts, layer) is not None or at_layer(schedule.adapters, layer) is not None:
            return layer
        if layer >= 1 and at_layer(schedule.remove, layer):
            return layer
    return n_layers


def autocast_state(device):
    kind = device.type
    enabled = torch.is_autocast_enabled(kind)
    return kind, enabled, torch.get_autocast_dtype(kind) if enabled else None


def weight_signature(tensors):
    return tuple((t.data_ptr(), t._version, t.dtype, t.device, t.requires_grad) for t in tensors)


class FrozenBlockCache:
    """The hidden states entering block s of the passes over one class list (one entry per pass layout)."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.token_ids, self.context, self.states = None, None, {}

    def bind(self, token_ids, weights):
        """Keep the entries iff the token ids [N, 77], the `weights` and the autocast state are those they were
        computed with; else start afresh. Returns False (do not cache) when a weight requires grad."""
        if any(w.requires_grad for w in weights):
            return False
        context = (weight_signature(weights), autocast_state(token_ids.device))
        same = (self.token_ids is not None and self.context == context and self.token_ids.shape == token_ids.shape
                and self.token_ids.device == token_ids.device and torch.equal(self.token_ids, token_ids))
        if not same:
            self.clear()
            self.token_ids, self.context = token_ids.detach().clone(), context
        return True

    def get(self, key, compute):
        """The states of pass layout `key`, computed by `compute()` (without autograd) on first use."""
        if key not in self.states:
            with torch.inference_mode(False), torch.no_grad():
                self.states[key] = compute()
        return self.states[key]


class LeadingImageStates:
    """The image tower's states entering block s of the last prompted pass whose first input is at s > 0, kept
    for a later pass on the same image tensor that feeds nothing before block s either (MMRL's frozen CLIP image
    features of the batch: blocks 0..s-1 are shared with the prompted pass instead of run twice). One slot; it
    holds the images themselves, so their identity and in-place version identify them."""

    def __init__(self):
        self.slot = None

    def keep(self, images, first, state, weights):
        if not any(w.requires_grad for w in weights) and not torch.is_inference_mode_enabled():
            self.slot = (images, images._version, first, state.detach(), weight_signature(weights),
                         autocast_state(images.device))

    def take(self, images, first, weights_of):
        """(s, states entering block s) kept for these images with s <= first (the pass's first input), else None."""
        if self.slot is None:
            return None
        kept, version, kept_first, state, signature, autocast = self.slot
        if not (kept is images and version == images._version and 0 < kept_first <= first):
            return None
        if signature != weight_signature(weights_of(kept_first)) or autocast != autocast_state(images.device):
            return None
        return kept_first, state
