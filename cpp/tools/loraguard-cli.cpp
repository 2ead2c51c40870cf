// loraguard-cli for the static build: classify text and show metadata with no Python and no libllama.so.
// (The pip package installs a Python loraguard-cli with more subcommands; both exit 1 when input is flagged.)
//
//   loraguard-cli classify -m MODEL.gguf -g GUARD.gguf [--json] [--threads N] TEXT...
//   loraguard-cli info -m MODEL.gguf -g GUARD.gguf
#include "loraguard.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int k_exit_flagged = 1;
constexpr int k_exit_error = 2;

int usage() {
    std::fprintf(stderr,
                 "usage: loraguard-cli classify -m MODEL.gguf -g GUARD.gguf [--json] [--threads N] TEXT...\n"
                 "       loraguard-cli info -m MODEL.gguf -g GUARD.gguf\n");
    return k_exit_error;
}

int error(const char * what) {
    std::fprintf(stderr, "loraguard-cli: error: %s%s\n", what, lg_last_error());
    return k_exit_error;
}

std::string json_string(const std::string & s) {
    std::string out = "\"";
    for (const unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 2) {
        return usage();
    }
    const std::string command = argv[1];
    std::string model_path;
    std::string guard_path;
    bool json = false;
    int threads = 0;
    std::vector<std::string> texts;
    for (int i = 2; i < argc; ++i) {
        const std::string arg = argv[i];
        if ((arg == "-m" || arg == "--model") && i + 1 < argc) {
            model_path = argv[++i];
        } else if ((arg == "-g" || arg == "--guard") && i + 1 < argc) {
            guard_path = argv[++i];
        } else if ((arg == "-t" || arg == "--threads") && i + 1 < argc) {
            threads = std::atoi(argv[++i]);
        } else if (arg == "--json") {
            json = true;
        } else {
            texts.push_back(arg);
        }
    }
    if ((command != "classify" && command != "info") || model_path.empty() || guard_path.empty()) {
        return usage();
    }

    lg_model * model = nullptr;
    if (lg_model_load(model_path.c_str(), nullptr, &model) != LG_OK) {
        return error("");
    }
    lg_guard_params gparams = lg_guard_default_params();
    gparams.n_threads = threads;
    lg_guard * guard = nullptr;
    if (lg_guard_load(model, guard_path.c_str(), &gparams, &guard) != LG_OK) {
        lg_model_free(model);
        return error("");
    }
    const int n_labels = lg_guard_n_labels(guard);
    int rc = 0;
    if (command == "info") {
        std::printf("model: %s (%s, %s), fingerprint %s\nguard: %d labels, LoRA rank %d, %llu parameters\n",
                    lg_model_name(model), lg_model_architecture(model), lg_model_file_type(model),
                    lg_model_fingerprint(model), n_labels, lg_guard_lora_rank(guard),
                    static_cast<unsigned long long>(lg_guard_n_params(guard)));
    } else if (texts.empty()) {
        rc = usage();
    } else {
        std::vector<lg_input> inputs;
        for (const auto & t : texts) {
            inputs.push_back({t.c_str(), t.size(), nullptr, 0});
        }
        std::vector<float> logits(texts.size() * n_labels);
        std::vector<float> probs(logits.size());
        std::vector<uint8_t> flagged(logits.size());
        if (lg_guard_classify(guard, inputs.data(), inputs.size(), logits.data(), probs.data(), flagged.data()) != LG_OK) {
            rc = error("");
        } else {
            for (size_t i = 0; i < texts.size(); ++i) {
                bool any = false;
                std::string scores;
                for (int l = 0; l < n_labels; ++l) {
                    const size_t k = i * n_labels + l;
                    any = any || flagged[k];
                    char buf[64];
                    std::snprintf(buf, sizeof(buf), "%.6f", probs[k]);
                    scores += (l ? ", " : "") + json_string(lg_guard_label(guard, l)) + ": " + buf;
                }
                if (json) {
                    std::printf("{\"text\": %s, \"flagged\": %s, \"scores\": {%s}}\n", json_string(texts[i]).c_str(),
                                any ? "true" : "false", scores.c_str());
                } else {
                    std::printf("%s\t%s\n", any ? "FLAGGED" : "ok", scores.c_str());
                }
                rc = any ? k_exit_flagged : rc;
            }
        }
    }
    lg_guard_free(guard);
    lg_model_free(model);
    return rc;
}
