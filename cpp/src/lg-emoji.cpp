#include "lg-emoji.h"

#include "lg-cp-table.h"
#include "lg-decode.h"
#include "lg-text.h"

#include <cstdint>

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

static_assert(lg::sorted_by_cp(k_emoji_words), "find_cp searches by binary search");

bool is_skin_tone(uint32_t cp) { return cp >= 0x1F3FB && cp <= 0x1F3FF; }

}  // namespace

namespace lg {

bool emoji_stands_for_word(uint32_t cp) { return find_cp(k_emoji_words, cp) != nullptr; }

std::optional<std::string> read_emoji_words(std::string_view text) {
    std::string out;
    bool replaced = false;
    size_t len = 0;
    for (size_t i = 0; i < text.size(); i += len) {
        const uint32_t cp = decode_valid_utf8(text, i, len);
        const auto * e = find_cp(k_emoji_words, cp);
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
