"""What a policy glob means, as the regex policies used to compile it to.

`**` is `.*`, `*` is `[^/]*`, `?` is `[^/]`, compared as `re.IGNORECASE` compares. The
property tests check the matcher against it; the glob benchmark times it.
"""

import re


def regex_of(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    position = 0
    while position < len(pattern):
        if pattern.startswith("**", position):
            parts.append(".*")
            while pattern.startswith("*", position):
                position += 1
        elif pattern[position] == "*":
            parts.append("[^/]*")
            position += 1
        elif pattern[position] == "?":
            parts.append("[^/]")
            position += 1
        else:
            parts.append(re.escape(pattern[position]))
            position += 1
    return re.compile("".join(parts), re.IGNORECASE)
