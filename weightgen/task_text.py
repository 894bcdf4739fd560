"""The text side of tasks: plain-English paraphrases of a task, and the prompt parser that reads one.

Generators condition on these paraphrases (one drawn per training example), and `weightgen sample`
reads a user's prompt with `parse`. Every paraphrase parses back to its task (tested).
"""

from __future__ import annotations

import re

from weightgen.errors import TaskError
from weightgen.specs import find_arch
from weightgen.tasks import TaskSpec, combined_shift_task, get_task, number_text, subset_task

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PLURALS = ["zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines"]
DEFAULT_LEVEL = {"noise": 0.2, "blur": 1.0}  # used when a prompt names the shift but no strength
# Three phrasings of each shift, one per paraphrase of a combined shift task (applied in this order).
_FRAGMENTS = {
    "rotate": ("rotated by {} degrees", "turned {} degrees", "rotated {} degrees"),
    "blur": ("blurred with sigma {}", "blurred (blur {})", "with blur {}"),
    "invert": ("with inverted colours", "colour-inverted", "negative"),
    "noise": ("with added noise of strength {}", "with noise {}", "under Gaussian pixel noise of {}"),
}


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(task: TaskSpec) -> list[str]:
    """At least three paraphrases of a task."""
    if task.kind == "digits-subset":
        nums, words = [str(c) for c in task.classes], [WORDS[c] for c in task.classes]
        if len(task.classes) == 10:
            return ["classify all ten handwritten digits", "recognise every digit from 0 to 9 in 8x8 images",
                    "a classifier for handwritten digits zero through nine"]
        out = [f"classify handwritten digits {_and(nums)}", f"tell apart the digits {_and(words)}",
               f"recognise 8x8 images of the digits {_and(nums)}"]
        if len(task.classes) == 2:
            out.append(f"tell {nums[0]}s apart from {nums[1]}s")
        return out
    if task.kind == "digits-shift" and task.more:
        frags = [[f.format(number_text(level)) for f in _FRAGMENTS[shift]] for shift, level in task.shifts]
        return [f"classify handwritten digits {_and([f[0] for f in frags])}",
                f"recognise all ten digits in images {_and([f[1] for f in frags])}",
                f"digit classification on 8x8 images {_and([f[2] for f in frags])}"]
    if task.kind == "digits-shift":
        lv = number_text(task.level)
        return {
            "rotate": [f"classify handwritten digits rotated by {lv} degrees",
                       f"recognise all ten digits in images turned {lv} degrees",
                       f"digit classification on 8x8 images rotated {lv} degrees"],
            "noise": [f"classify handwritten digits with added noise of strength {lv}",
                      f"recognise all ten digits in noisy images (noise {lv})",
                      f"digit classification under Gaussian pixel noise of {lv}"],
            "invert": ["classify handwritten digits with inverted colours",
                       "recognise all ten digits in colour-inverted images",
                       "digit classification on negative images"],
            "blur": [f"classify blurred handwritten digits (blur {lv})",
                     f"recognise all ten digits in images blurred with sigma {lv}",
                     f"digit classification on blurry 8x8 images, blur {lv}"],
        }[task.shift]
    if task.kind == "digits-image":
        i = task.image
        return [f"represent handwritten digit image {i} as a coordinate network",
                f"fit digits image {i} with an implicit neural representation",
                f"an INR that draws the 8x8 digit image number {i}"]
    return {
        "iris": ["classify iris flowers into their three species",
                 "tell setosa, versicolor and virginica irises apart",
                 "predict the iris species from sepal and petal measurements"],
        "wine": ["classify wines into their three cultivars",
                 "tell the three wine cultivars apart from their chemical analysis",
                 "predict a wine's grape cultivar from 13 chemical measurements"],
        "breast-cancer": ["diagnose breast tumours as malignant or benign",
                          "classify breast cancer biopsies from cell-nucleus features",
                          "tell malignant from benign breast masses"],
    }[task.dataset]


# Words a prompt may contain that carry no task information of their own.
_FILLER = set(
    "a an the and or of on in to with from by for as at is are be that which into under using "
    "classify classifier classification recognise recognize recognition tell apart distinguish "
    "discriminate between vs versus digit digits handwritten images image pictures 8x8 class classes "
    "model network net task please make train generate weights degrees degree deg strength level sigma "
    "all ten every only numbers number s".split()
)


def parse(text: str) -> TaskSpec:
    """Read a task out of plain English; raises TaskError naming what it could not understand."""
    if not text.strip():
        raise TaskError("the prompt is empty; describe a task such as 'digits 3, 5 and 8' or 'iris'")
    _, rest = find_arch(text)  # "... with an MLP 64-32-3": the sizes are not digit classes
    s = " " + rest.lower().replace("°", " degrees ").replace("’", "'") + " "
    s = re.sub(r"\b8\s*[x×]\s*8\b", " ", s)  # "8x8 images" is the image size, not two 8s
    if re.search(r"\biris", s):
        return get_task("iris")
    if re.search(r"\bwines?\b|cultivar", s):
        return get_task("wine")
    if re.search(r"breast|tumou?r|malignan|benign", s):
        return get_task("breast-cancer")
    m = re.search(r"\b(?:image|picture)\s*(?:number|#|no\.?)?\s*(\d+)", s)
    if m and re.search(r"\binr\b|implicit|coordinate|represent|fit\b|draw", s):
        return get_task(f"digits-image-{m.group(1)}")

    shifts: dict[str, float] = {}
    m = re.search(r"\b(?:rotat|turn)\w*(?:\s+(?:by|of|through))?\s+(-?\d+(?:\.\d+)?)"
                  r"|(-?\d+(?:\.\d+)?)\s*degrees?\s+(?:rotat|turn)", s)
    if m:
        shifts["rotate"], s = float(m.group(1) or m.group(2)), s[: m.start()] + " " + s[m.end():]
    elif re.search(r"\brotat", s):
        raise TaskError(f"'{text.strip()}' asks for rotated digits but gives no angle (say e.g. 'rotated by 30 degrees')")
    for name, pattern, other in (("noise", r"nois\w*", "blur"), ("blur", r"blur\w*", "nois")):
        # the strength may follow within a few words ("blur 1", "noise of strength 0.3", "blurred ...
        # (blur 0.5)"), but not past another shift's name: "blurred, with noise 0.3" is blur at its default
        m = re.search(rf"\b{pattern}(?:(?:(?!{other}|invert|negative)[^0-9]){{0,40}}?(\d+(?:\.\d+)?))?", s)
        if m:
            shifts[name] = float(m.group(1)) if m.group(1) else DEFAULT_LEVEL[name]
            s = s[: m.start()] + " " + s[m.end():]
    if re.search(r"\binvert\w*|\bnegative|\binverse", s):
        shifts["invert"] = 0.0

    classes = _classes(s)
    if shifts:
        if classes and len(classes) < 10:
            raise TaskError(f"'{text.strip()}' mixes a shift ({', '.join(shifts)}) with a class subset; "
                            "shift tasks use all ten digits")
        return combined_shift_task(shifts.items())
    if len(classes) >= 2:
        return subset_task(classes)
    if len(classes) == 1:
        raise TaskError(f"'{text.strip()}' names only the digit {classes[0]}; a classifier needs at least two classes")
    if re.search(r"\bdigits?\b", s):
        return subset_task(range(10))
    unknown = [w for w in re.findall(r"[a-z0-9']+", s) if w not in _FILLER and w not in WORDS]
    what = ", ".join(f"'{w}'" for w in unknown) or "nothing"
    raise TaskError(
        f"no known task in '{text.strip()}': could not understand {what}; try 'digits 3, 5 and 8', "
        "'tell 4s apart from 9s', 'digits rotated by 30 degrees', 'iris', 'wine' or 'breast cancer'"
    )


def _classes(s: str) -> list[int]:
    """Digit classes named in a prompt: numerals, words, plurals ('4s', 'sixes') and ranges ('0 to 4')."""
    if re.search(r"\ball\s+(?:ten\s+|10\s+)?digits|\bevery digit|\b0\s*(?:-|to|through)\s*9\b", s):
        return list(range(10))
    found = []
    digit = r"(\d|" + "|".join(WORDS) + r")"
    ranged = rf"\b{digit}\s*(?:to|through|-)\s*{digit}\b"
    for a, b in re.findall(ranged, s):
        lo, hi = (int(v) if v.isdigit() else WORDS.index(v) for v in (a, b))
        found += range(lo, hi + 1)
    s = re.sub(ranged, " ", s)
    for tok in re.findall(r"[a-z]+|\d+(?:\.\d+)?(?:'?s)?", s):
        num = tok.rstrip("s").rstrip("'")
        if num.isdigit():
            if int(num) > 9:
                raise TaskError(f"{num} is not a digit class; digit classes are 0-9")
            found.append(int(num))
        elif tok in WORDS:
            found.append(WORDS.index(tok))
        elif tok in PLURALS:
            found.append(PLURALS.index(tok))
    return sorted(set(found))
