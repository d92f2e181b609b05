#include "src/engine/negative_prompt.h"

#include <cctype>
#include <map>
#include <stdexcept>

namespace reel {

namespace {

const char kSwap[] = "swap:";
const char kPrefix[] = "negative prompt: ";

std::string lower(std::string s) {
    for (char& c : s)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// "a=b,c=d" -> {a: b, c: d}; words compare without case.
std::map<std::string, std::string> parse_swaps(const std::string& list) {
    std::map<std::string, std::string> swaps;
    size_t pos = 0;
    while (pos <= list.size()) {
        const size_t end = std::min(list.find(',', pos), list.size());
        const std::string item = list.substr(pos, end - pos);
        const size_t eq = item.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == item.size() || item.find(' ') != std::string::npos)
            throw std::runtime_error(kPrefix + ("'" + item) +
                                     "' is not a word swap; expected swap:word=other[,word=other...]");
        if (!swaps.emplace(lower(item.substr(0, eq)), item.substr(eq + 1)).second)
            throw std::runtime_error(kPrefix + ("'" + item.substr(0, eq)) + "' is swapped twice");
        pos = end + 1;
    }
    return swaps;
}

bool is_swap(const std::string& spec) {
    return spec.compare(0, sizeof kSwap - 1, kSwap) == 0;
}

}  // namespace

void check_negative_prompt(const std::string& spec) {
    if (is_swap(spec))
        parse_swaps(spec.substr(sizeof kSwap - 1));
}

std::string negative_prompt_problem(const std::string& spec) {
    try {
        check_negative_prompt(spec);
    } catch (const std::runtime_error& e) {
        return std::string(e.what()).substr(sizeof kPrefix - 1);
    }
    return "";
}

std::string negative_prompt_for(const std::string& prompt, const std::string& spec) {
    if (!is_swap(spec))
        return spec;
    const std::map<std::string, std::string> swaps = parse_swaps(spec.substr(sizeof kSwap - 1));
    // Word by word; the separators (spaces, punctuation) stay where they are.
    std::string out;
    size_t i = 0;
    while (i < prompt.size()) {
        if (!std::isalnum(static_cast<unsigned char>(prompt[i]))) {
            out += prompt[i++];
            continue;
        }
        size_t j = i;
        while (j < prompt.size() && std::isalnum(static_cast<unsigned char>(prompt[j])))
            ++j;
        const std::string word = prompt.substr(i, j - i);
        auto it = swaps.find(lower(word));
        out += it == swaps.end() ? word : it->second;
        i = j;
    }
    return out;
}

std::vector<std::string> guidance_prompts(const std::string& prompt,
                                          double guidance,
                                          const std::string& negative_spec,
                                          double negative_guidance) {
    const std::string negative = negative_prompt_for(prompt, negative_spec);
    std::vector<std::string> texts{prompt};
    if (guidance != 1.0)
        texts.push_back(negative_guidance > 0 ? std::string() : negative);
    if (negative_guidance > 0)
        texts.push_back(negative);
    return texts;
}

}  // namespace reel
