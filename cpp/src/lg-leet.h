// A second reading of a text for the guard: leetspeak read as the letters it stands for.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace lg {

// The text with digits and @ $ inside words read as the letters they stand for (0 o, 1 i, 3 e, 4 a, 5 s, 7 t,
// @ a, $ s: "h0w t0 m4k3 4 b0mb" -> "how to make a bomb"), or nothing when the text holds no leetspeak word: a
// word with one of those digits between two of its letters ("b0mb", "k1ll", "P@ssw0rd"). Digits cannot be read
// as letters in place ("3D-printed", "mp3", "Windows 10" would lose what they say), so a guard scores this
// reading beside the text as written and keeps the higher score. Handles (@name), URLs and paths, e-mail
// addresses and words whose letters mix case like random codes ("TOq4bFWnzG") are left as written and never
// count as leetspeak. Works on ASCII bytes: any other byte ends a word and is kept.
std::optional<std::string> leet_reading(std::string_view text);

}  // namespace lg
