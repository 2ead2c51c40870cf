"""GGUF key names of the guard format (docs/guard-format.md)."""

# the newest guard format this package reads; it writes 1 for plain LoRA guards (every loraguard runs them) and 2
# for aLoRA guards, which a reader of format 1 would run as a plain LoRA on every token: it must refuse them
FORMAT_VERSION = 2
LORA_FORMAT_VERSION = 1
ALORA_FORMAT_VERSION = 2

VERSION = "loraguard.version"
LABELS = "loraguard.labels"
THRESHOLDS = "loraguard.thresholds"
HEAD_WEIGHT = "loraguard.head.weight"
HEAD_BIAS = "loraguard.head.bias"
POOLING = "loraguard.pooling"
TEMPLATE_PROMPT = "loraguard.template.prompt"
TEMPLATE_PAIR = "loraguard.template.pair"
TEMPLATE_PARSE_SPECIAL = "loraguard.template.parse_special"
BASE_ARCHITECTURE = "loraguard.base.architecture"
BASE_N_EMBD = "loraguard.base.n_embd"
BASE_N_LAYER = "loraguard.base.n_layer"
BASE_FINGERPRINT = "loraguard.base.fingerprint"
BASE_NAME = "loraguard.base.name"
BASE_MEASURED_TYPES = "loraguard.base.measured_types"
ACTIVATION = "loraguard.activation"
ALORA_INVOCATION = "loraguard.alora.invocation"

GENERAL_TYPE = "general.type"
GENERAL_ARCHITECTURE = "general.architecture"
GENERAL_NAME = "general.name"
GENERAL_FILE_TYPE = "general.file_type"
GENERAL_ALIGNMENT = "general.alignment"
ADAPTER_TYPE = "adapter.type"
ADAPTER_LORA_ALPHA = "adapter.lora.alpha"
ADAPTER_ALORA_INVOCATION_TOKENS = "adapter.alora.invocation_tokens"
TOKENIZER_TOKENS = "tokenizer.ggml.tokens"
SPLIT_COUNT = "split.count"

POOLINGS = ("last", "mean", "cls")
ACTIVATIONS = ("lora", "alora")
