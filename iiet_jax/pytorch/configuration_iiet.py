"""Config of an exported IIET / PCformer model: Llama fields plus the ODE ones.

`iiet_arch` is "iiet" or "pcformer"; `iterations` the implicit iterations of
every layer (IIET, E-IIET when they differ); `pc_order` the Runge-Kutta order
(PCformer); `layer_norm_eps` the eps of the LNp / LNc / LNrk LayerNorms.
Grouped-query attention (`num_key_value_heads`) and RoPE scaling
(`rope_parameters`) are LlamaConfig's own fields.
"""

from transformers import LlamaConfig

# The architectures this model code runs (`iiet_arch`). These files ship
# standalone in exports, so they keep their own list of what
# iiet_jax/models/registry.py writes with this model_type
# (tests/models/test_registry.py checks that the two agree).
IIET_ARCHS = ("iiet", "pcformer")


class IIETConfig(LlamaConfig):
  model_type = "iiet"

  iiet_arch: str = "iiet"
  iterations: list | None = None
  pc_order: int = 2
  layer_norm_eps: float = 1e-5

  def __post_init__(self, **kwargs):
    super().__post_init__(**kwargs)
    if self.iiet_arch not in IIET_ARCHS:
      raise ValueError(f"iiet_arch={self.iiet_arch!r}: this model code runs "
                       f"{', '.join(IIET_ARCHS)} (Transformer++ exports load "
                       f"as LlamaForCausalLM).")
    if self.iterations is None:
      self.iterations = [3] * self.num_hidden_layers
    self.iterations = [int(r) for r in self.iterations]
    if len(self.iterations) != self.num_hidden_layers:
      raise ValueError(f"iterations has {len(self.iterations)} entries for "
                       f"{self.num_hidden_layers} layers.")
    if self.pc_order not in (2, 4):
      raise ValueError(f"pc_order={self.pc_order} is not 2 or 4.")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
          f"num_attention_heads={self.num_attention_heads} is not divisible "
          f"by num_key_value_heads={self.num_key_value_heads}: each key / "
          f"value head must serve the same number of query heads.")
