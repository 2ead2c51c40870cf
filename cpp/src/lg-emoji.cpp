#include "lg-emoji.h"

#include "lg-decode.h"
#include "lg-text.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

namespace {

// Emoji that stand for what a harmful request names (a weapon, a drug, a person, a place), with the word a reader
// reads for each: "how do I make a 💣" is a request for a bomb to a chat model, while a guard read it as a symbol
// (minilm as [UNK]) and let it pass. Their Unicode names, shortened to the thing where the name describes the picture
// (🔫 "water pistol" is read as a gun, ☠ "skull and crossbones" as poison). Emoji people use for a mood ("🔥", "💀")
// are left out: read as words, they would change what ordinary messages say.
struct emoji_word {
    uint32_t cp;
    std::string_view word;
};
constexpr emoji_word k_emoji_words[] = {
    {0x2620, "poison"},      {0x2622, "radioactive"}, {0x2623, "biohazard"},    {0x2694, "swords"},
    {0x26B0, "coffin"},      {0x26EA, "church"},      {0x2708, "plane"},        {0x1F3E5, "hospital"},
    {0x1F3E6, "bank"},       {0x1F3EB, "school"},     {0x1F3F9, "bow and arrow"}, {0x1F408, "cat"},
    {0x1F415, "dog"},        {0x1F431, "cat"},        {0x1F436, "dog"},         {0x1F466, "boy"},
    {0x1F467, "girl"},       {0x1F468, "man"},        {0x1F469, "woman"},       {0x1F46E, "police officer"},
    {0x1F476, "baby"},       {0x1F489, "syringe"},    {0x1F48A, "pill"},        {0x1F4A3, "bomb"},
    {0x1F4B0, "money"},      {0x1F4B3, "credit card"}, {0x1F4B5, "cash"},       {0x1F52A, "knife"},
    {0x1F52B, "gun"},        {0x1F54C, "mosque"},     {0x1F54D, "synagogue"},   {0x1F595, "middle finger"},
    {0x1F5E1, "dagger"},     {0x1F6AC, "cigarette"},  {0x1F9A0, "virus"},       {0x1F9D2, "child"},
    {0x1F9E8, "dynamite"},   {0x1F9EA, "chemicals"},  {0x1FA78, "blood"},       {0x1FA93, "axe"},
};

constexpr bool sorted_by_cp() {
    for (size_t i = 1; i < std::size(k_emoji_words); ++i) {
        if (!(k_emoji_words[i - 1].cp < k_emoji_words[i].cp)) {
            return false;
        }
    }
    return true;
}
static_assert(sorted_by_cp(), "word_of searches by binary search");

const emoji_word * word_of(uint32_t cp) {
    const auto * end = std::end(k_emoji_words);
    const auto * it = std::lower_bound(std::begin(k_emoji_words), end, cp,
                                       [](const emoji_word & e, uint32_t c) { return e.cp < c; });
    return it != end && it->cp == cp ? it : nullptr;
}

bool is_skin_tone(uint32_t cp) { return cp >= 0x1F3FB && cp <= 0x1F3FF; }

}  // namespace

namespace lg {

bool emoji_stands_for_word(uint32_t cp) { return word_of(cp) != nullptr; }

std::optional<std::string> read_emoji_words(std::string_view text) {
    std::string out;
    bool replaced = false;
    size_t len = 0;
    for (size_t i = 0; i < text.size(); i += len) {
        const uint32_t cp = decode_valid_utf8(text, i, len);
        const emoji_word * e = word_of(cp);
        if (!e) {
            out.append(text.substr(i, len));
            continue;
        }
        // a word of its own, set apart from letters written against it ("a💣" is "a bomb")
        if (!out.empty() && is_ascii_alnum(out.back())) {
            out.push_back(' ');
        }
        out.append(e->word);
        size_t next_len = 0;
        while (i + len < text.size() && is_skin_tone(decode_valid_utf8(text, i + len, next_len))) {
            len += next_len;
        }
        if (i + len < text.size() && is_ascii_alnum(text[i + len])) {
            out.push_back(' ');
        }
        replaced = true;
    }
    if (!replaced) {
        return std::nullopt;
    }
    return out;
}

}  // namespace lg
