"""A vLLM worker extension: the in-place alpha switch, computed inside each worker.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``), so
``llm.collective_rpc("expo_set_alpha", args=(...))`` sends only paths and a float: every worker
(one per tensor-parallel rank) streams theta1 + alpha * (theta1 - theta0) from the checkpoints on
disk into ``model_runner.reload_weights``, which re-runs vLLM's own loading (q/k/v and gate/up
fusion, sharding, CPU weight repacking). No tensors cross the RPC, so this works with the engine
in a separate process and needs no insecure serialization. This module must not import vLLM.
"""

from __future__ import annotations


class ExpoWeightsExtension:
    def expo_set_alpha(
        self, sft_dir: str, aligned_dir: str, alpha: float, vocab_policy: str = "error"
    ) -> float:
        import time

        from expo_batch.generate.weights import PairSource

        start = time.perf_counter()
        key = (sft_dir, aligned_dir, vocab_policy)
        source = getattr(self, "_expo_pair_source", None)
        if source is None or getattr(self, "_expo_pair_key", None) != key:
            source = PairSource(sft_dir, aligned_dir, vocab_policy=vocab_policy)
            self._expo_pair_source = source
            self._expo_pair_key = key
        self.model_runner.reload_weights(weights_iterator=source.tensors(float(alpha)))
        return time.perf_counter() - start
