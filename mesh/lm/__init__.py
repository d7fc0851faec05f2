"""The configured language model (DSPy) behind every LM feature of the mesh.

``LMSettings`` says which model (``[lm]`` in registry.toml, ``MESH_LM_*``); ``build_lm`` makes the
``dspy.LM``; without a model, ``NoModelConfigured`` says in one line how to configure one. Importing this
package imports neither DSPy nor LiteLLM.
"""

from mesh.lm.settings import HOW_TO_CONFIGURE, LMSettings, NoModelConfigured

__all__ = ["HOW_TO_CONFIGURE", "LMSettings", "NoModelConfigured"]
