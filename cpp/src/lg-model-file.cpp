#include "lg-model-file.h"

#include "lg-error.h"
#include "lg-text.h"

namespace lg {

void check_model_file(const gguf_file & file) {
    // llama.cpp loads a model without a vocabulary ("no_vocab", for embeddings fed by the caller) and then
    // asserts in every tokenizer call; both loraguard paths tokenize text.
    const std::string tokenizer = file.get_str("tokenizer.ggml.model").value_or("");
    if (tokenizer == "none" || tokenizer == "no_vocab") {
        fail(LG_ERR_FORMAT, "model file " + file.path() + " has no vocabulary (tokenizer.ggml.model is '" + tokenizer +
                                "'): loraguard tokenizes text on both paths; convert the model with its tokenizer");
    }
    // These reach Python as str (Model.name, Model.architecture) and error messages.
    for (const char * key : {"general.name", "general.architecture"}) {
        if (invalid_utf8_offset(file.get_str(key).value_or("")) != std::string_view::npos) {
            fail(LG_ERR_FORMAT, "model file " + file.path() + ": " + key + " is not UTF-8: the file is corrupt");
        }
    }
}

}  // namespace lg
