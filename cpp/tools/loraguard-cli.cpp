// loraguard-cli for the static build: classify text and show metadata with no Python and no libllama.so.
// The pip package installs a Python loraguard-cli with more subcommands (named guards, chat); on what both
// have, both take the same options, print the same JSON (--json) and use the same exit codes: 0 nothing
// flagged, 1 something flagged, 2 error (one line on stderr).
//
//   loraguard-cli classify -m MODEL.gguf -g GUARD.gguf [--json] [--response TEXT] [options] TEXT... | -
//   loraguard-cli info -m MODEL.gguf -g GUARD.gguf [--json] [options]
#include "loraguard.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr int k_exit_flagged = 1;
constexpr int k_exit_error = 2;

const char * const k_usage =
    "usage: loraguard-cli classify -m MODEL.gguf -g GUARD.gguf [--json] [--response TEXT] [options] TEXT... | -\n"
    "       loraguard-cli info -m MODEL.gguf -g GUARD.gguf [--json] [options]\n"
    "options: -t/--threads N, --ctx N, --overflow windows|keep_end|error (default windows), --isolated; '--' ends the options\n";

struct usage_error {
    std::string what;
};

int fail(const std::string & what) {
    std::fprintf(stderr, "loraguard-cli: error: %s\n", what.c_str());
    return k_exit_error;
}

std::string json_string(const char * s) {
    if (s == nullptr) {
        return "null";
    }
    std::string out = "\"";
    for (const unsigned char c : std::string(s)) {
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

std::string json_string(const std::string & s) { return json_string(s.c_str()); }

// Probabilities as the Python CLI writes them: rounded to 6 decimals.
std::string json_number(double x) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.6f", x);
    return buf;
}

struct options {
    std::string command;
    std::string model_path;
    std::string guard_path;
    std::optional<std::string> response;
    bool json = false;
    bool stdin_lines = false;
    lg_guard_params guard = lg_guard_default_params();
    std::vector<std::string> texts;
};

long parse_count(const std::string & flag, const char * value, long min) {
    char * end = nullptr;
    errno = 0;
    const long n = std::strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || n < min || n > 1 << 20) {
        throw usage_error{flag + " takes a whole number >= " + std::to_string(min) + ", got '" + value + "'"};
    }
    return n;
}

options parse(int argc, char ** argv) {
    if (argc < 2) {
        throw usage_error{"no command given"};
    }
    options opt;
    opt.command = argv[1];
    if (opt.command != "classify" && opt.command != "info") {
        throw usage_error{"unknown command '" + opt.command + "' (the static CLI has classify and info)"};
    }
    bool options_done = false;
    for (int i = 2; i < argc; ++i) {
        const std::string arg = argv[i];
        if (options_done || arg == "-" || arg.empty() || arg[0] != '-') {
            opt.texts.push_back(arg);
            continue;
        }
        if (arg == "--") {
            options_done = true;
            continue;
        }
        if (arg == "--json") {
            opt.json = true;
            continue;
        }
        if (arg == "--isolated") {
            opt.guard.isolated = true;
            continue;
        }
        const bool takes_value = arg == "-m" || arg == "--model" || arg == "-g" || arg == "--guard" || arg == "-t" ||
                                 arg == "--threads" || arg == "--ctx" || arg == "--overflow" || arg == "--response";
        if (!takes_value) {
            throw usage_error{"unknown option " + arg};
        }
        if (i + 1 >= argc) {
            throw usage_error{arg + " needs a value"};
        }
        const char * value = argv[++i];
        if (arg == "-m" || arg == "--model") {
            opt.model_path = value;
        } else if (arg == "-g" || arg == "--guard") {
            opt.guard_path = value;
        } else if (arg == "-t" || arg == "--threads") {
            opt.guard.n_threads = static_cast<int32_t>(parse_count(arg, value, 1));
        } else if (arg == "--ctx") {
            opt.guard.n_ctx = static_cast<uint32_t>(parse_count(arg, value, 1));
        } else if (arg == "--response") {
            opt.response = value;
        } else {
            const std::string policy = value;
            if (policy == "keep_end") {
                opt.guard.overflow = LG_OVERFLOW_KEEP_END;
            } else if (policy == "windows") {
                opt.guard.overflow = LG_OVERFLOW_WINDOWS;
            } else if (policy == "error") {
                opt.guard.overflow = LG_OVERFLOW_ERROR;
            } else {
                throw usage_error{"--overflow takes keep_end, windows or error, got '" + policy + "'"};
            }
        }
    }
    if (opt.model_path.empty() || opt.guard_path.empty()) {
        throw usage_error{"-m MODEL.gguf and -g GUARD.gguf are both required (the static CLI has no named guards)"};
    }
    if (opt.command == "info" && !opt.texts.empty()) {
        throw usage_error{"info takes no text"};
    }
    if (opt.command == "classify") {
        if (opt.texts.empty()) {
            throw usage_error{"nothing to classify: give text, or '-' for lines on stdin"};
        }
        opt.stdin_lines = opt.texts.size() == 1 && opt.texts[0] == "-";
    }
    return opt;
}

void print_info(const options & opt, const lg_model * model, const lg_guard * guard) {
    const int32_t n_labels = lg_guard_n_labels(guard);
    if (!opt.json) {
        std::printf("model: %s (%s, %s), fingerprint %s\nguard: %d labels, LoRA rank %d, %llu parameters\n",
                    lg_model_name(model), lg_model_architecture(model), lg_model_file_type(model),
                    lg_model_fingerprint(model), n_labels, lg_guard_lora_rank(guard),
                    static_cast<unsigned long long>(lg_guard_n_params(guard)));
        return;
    }
    std::string labels;
    std::string thresholds;
    for (int32_t l = 0; l < n_labels; ++l) {
        labels += (l ? ", " : "") + json_string(lg_guard_label(guard, l));
        thresholds += (l ? ", " : "") + json_number(lg_guard_threshold(guard, l));
    }
    const double n_params = static_cast<double>(lg_guard_n_params(guard));
    std::printf(
        "{\"model\": {\"path\": %s, \"name\": %s, \"architecture\": %s, \"file_type\": %s, \"n_embd\": %d, "
        "\"n_layer\": %d, \"n_vocab\": %d, \"n_params\": %llu, \"fingerprint\": %s, \"encoder\": %s}, "
        "\"guard\": {\"path\": %s, \"labels\": [%s], \"thresholds\": [%s], \"lora_rank\": %d, \"n_params\": %llu, "
        "\"params_vs_base\": %.9g, \"pooling\": %s, \"template\": %s, \"template_pair\": %s, \"base_name\": %s, "
        "\"base_fingerprint\": %s}}\n",
        json_string(opt.model_path).c_str(), json_string(lg_model_name(model)).c_str(),
        json_string(lg_model_architecture(model)).c_str(), json_string(lg_model_file_type(model)).c_str(),
        lg_model_n_embd(model), lg_model_n_layer(model), lg_model_n_vocab(model),
        static_cast<unsigned long long>(lg_model_n_params(model)), json_string(lg_model_fingerprint(model)).c_str(),
        lg_model_is_encoder(model) ? "true" : "false", json_string(opt.guard_path).c_str(), labels.c_str(),
        thresholds.c_str(), lg_guard_lora_rank(guard), static_cast<unsigned long long>(lg_guard_n_params(guard)),
        n_params / static_cast<double>(lg_model_n_params(model)), json_string(lg_guard_meta(guard, "pooling")).c_str(),
        json_string(lg_guard_meta(guard, "template.prompt")).c_str(),
        json_string(lg_guard_meta(guard, "template.pair")).c_str(),
        json_string(lg_guard_meta(guard, "base.name")).c_str(),
        json_string(lg_guard_meta(guard, "base.fingerprint")).c_str());
}

// One JSON object (or text line) per input: {"text", "flagged", "flagged_labels", "scores"}, as the Python CLI.
int classify(const options & opt, lg_guard * guard) {
    std::vector<std::string> texts = opt.texts;
    if (opt.stdin_lines) {
        texts.clear();
        for (std::string line; std::getline(std::cin, line);) {
            if (!line.empty()) {
                texts.push_back(line);
            }
        }
    }
    if (texts.empty()) {
        return 0;
    }
    const size_t n_labels = static_cast<size_t>(lg_guard_n_labels(guard));
    std::vector<lg_input> inputs;
    for (const auto & t : texts) {
        inputs.push_back({t.c_str(), t.size(), opt.response ? opt.response->c_str() : nullptr,
                          opt.response ? opt.response->size() : 0});
    }
    std::vector<float> logits(texts.size() * n_labels);
    std::vector<float> probs(logits.size());
    std::vector<uint8_t> flagged(logits.size());
    if (lg_guard_classify(guard, inputs.data(), inputs.size(), logits.data(), probs.data(), flagged.data()) != LG_OK) {
        return fail(lg_last_error());
    }
    int rc = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
        std::string labels;
        std::string scores;
        std::string detail;
        for (size_t l = 0; l < n_labels; ++l) {
            const size_t k = i * n_labels + l;
            const char * label = lg_guard_label(guard, static_cast<int32_t>(l));
            if (flagged[k]) {
                labels += (labels.empty() ? "" : opt.json ? ", " : ",") + (opt.json ? json_string(label) : label);
            }
            scores += (l ? ", " : "") + json_string(label) + ": " + json_number(probs[k]);
            char buf[32];
            std::snprintf(buf, sizeof(buf), "%.3f", probs[k]);
            detail += (l ? " " : "") + std::string(label) + "=" + buf;
        }
        const bool any = !labels.empty();
        if (opt.json) {
            std::printf("{\"text\": %s, \"flagged\": %s, \"flagged_labels\": [%s], \"scores\": {%s}}\n",
                        json_string(texts[i]).c_str(), any ? "true" : "false", labels.c_str(), scores.c_str());
        } else {
            std::printf("%s\t%s\n", any ? ("FLAGGED " + labels).c_str() : "ok", detail.c_str());
        }
        rc = any ? k_exit_flagged : rc;
    }
    return rc;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc == 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
        std::fputs(k_usage, stdout);
        return 0;
    }
    options opt;
    try {
        opt = parse(argc, argv);
    } catch (const usage_error & e) {
        return fail(e.what + " (loraguard-cli --help shows the usage)");
    }
    lg_model * model = nullptr;
    if (lg_model_load(opt.model_path.c_str(), nullptr, &model) != LG_OK) {
        return fail(lg_last_error());
    }
    lg_guard * guard = nullptr;
    if (lg_guard_load(model, opt.guard_path.c_str(), &opt.guard, &guard) != LG_OK) {
        const int rc = fail(lg_last_error());
        lg_model_free(model);
        return rc;
    }
    if (const char * warning = lg_guard_warning(guard); warning != nullptr && *warning != '\0') {
        std::fprintf(stderr, "loraguard-cli: warning: %s\n", warning);
    }
    int rc = 0;
    if (opt.command == "info") {
        print_info(opt, model, guard);
    } else {
        rc = classify(opt, guard);
    }
    lg_guard_free(guard);
    lg_model_free(model);
    return rc;
}
