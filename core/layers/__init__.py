"""Platform-neutral model layers (nano-vllm's shape): tensor-parallel linear layers computed
through a LinearMethod, the vocabulary embedding and LM head, RMSNorm, activations, rotary.

Layers choose their kernels once, at construction, from the build context
(``fw.core.layers.build``): the platform's ops and the linear method for their prefix.
"""
