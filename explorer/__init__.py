"""Layer-Pruning Explorer backend: no Streamlit imports live here, so the CLI and tests use it directly.

transformers resolves its names lazily, and that resolution is not thread-safe: a fresh server's
sessions import the pages' modules from several threads at once, and one thread could see a
half-made module (ImportError: cannot import name 'AutoConfig'). Every explorer module is imported
after this package, under its import lock, so the names the backend uses are resolved here, once.
"""

import transformers.cache_utils  # noqa: F401
import transformers.pytorch_utils  # noqa: F401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: F401
