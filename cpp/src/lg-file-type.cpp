#include "lg-file-type.h"

#include <algorithm>
#include <cctype>
#include <iterator>

namespace lg {

namespace {

struct named_ftype {
    const char * name;
    llama_ftype ftype;
};

constexpr named_ftype k_file_types[] = {
    {"F32", LLAMA_FTYPE_ALL_F32},          {"F16", LLAMA_FTYPE_MOSTLY_F16},       {"BF16", LLAMA_FTYPE_MOSTLY_BF16},
    {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},     {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},     {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M},
    {"Q5_K_S", LLAMA_FTYPE_MOSTLY_Q5_K_S}, {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},     {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},
    {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M}, {"Q4_K_S", LLAMA_FTYPE_MOSTLY_Q4_K_S}, {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},
    {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},     {"Q3_K_L", LLAMA_FTYPE_MOSTLY_Q3_K_L}, {"Q3_K_M", LLAMA_FTYPE_MOSTLY_Q3_K_M},
    {"Q3_K_S", LLAMA_FTYPE_MOSTLY_Q3_K_S}, {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K},     {"IQ4_NL", LLAMA_FTYPE_MOSTLY_IQ4_NL},
    {"IQ4_XS", LLAMA_FTYPE_MOSTLY_IQ4_XS},
};

}  // namespace

std::string file_type_name(llama_ftype ftype) {
    for (const auto & ft : k_file_types) {
        if (ft.ftype == ftype) {
            return ft.name;
        }
    }
    return llama_ftype_name(ftype);
}

std::optional<llama_ftype> file_type_from_name(const std::string & name) {
    std::string upper;
    std::transform(name.begin(), name.end(), std::back_inserter(upper), [](unsigned char c) { return std::toupper(c); });
    for (const auto & ft : k_file_types) {
        if (upper == ft.name) {
            return ft.ftype;
        }
    }
    return std::nullopt;
}

std::string file_type_names() {
    std::string out;
    for (const auto & ft : k_file_types) {
        out += (out.empty() ? "" : ", ") + std::string(ft.name);
    }
    return out;
}

}  // namespace lg
