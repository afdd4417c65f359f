"""Regenerate the built-in demo task (tasc_edge/data/demo): coffee-shop orders -> JSON.

A low-output-variability task of our own making, so the package ships a demo with no third-party
data: every output has the same keys in the same order, which is what task n-grams exploit.
Run: python scripts/make_demo_task.py
"""

import json
import random
from pathlib import Path

DRINKS = ["latte", "cappuccino", "espresso", "americano", "flat white", "mocha", "chai latte",
          "hot chocolate", "cold brew", "macchiato", "iced latte", "green tea"]
SIZES = ["small", "medium", "large"]
MILKS = ["whole", "oat", "soy", "almond", "skim", "none"]
EXTRAS = ["none", "extra shot", "vanilla syrup", "caramel syrup", "whipped cream", "cinnamon"]
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
TEMPLATES = [
    "Hi, could I get {n} {size} {drink}{plural} with {milk} milk{extra_text}, please?",
    "I'd like {n} {size} {drink}{plural}{extra_text}, {milk} milk.",
    "{N} {size} {drink}{plural}, {milk} milk{extra_text}. That's all.",
    "Can you make me {n} {drink}{plural}? Size {size}, {milk} milk{extra_text}.",
    "One order please: {n} {drink}{plural} ({size}), milk: {milk}{extra_text}.",
]
INSTRUCTION = ('Extract the coffee order as JSON with the keys "drink", "size", "quantity", '
               '"milk" and "extra". Reply with the JSON object only, on one line, like this example.\n\n'
               'Order: Two small mochas with soy milk, please.\n'
               'JSON: {"drink": "mocha", "size": "small", "quantity": 2, "milk": "soy", "extra": "none"}\n\n'
               'Order: ')


def make_row(rng: random.Random, i: int, split: str) -> dict:
    drink, size, milk, extra = rng.choice(DRINKS), rng.choice(SIZES), rng.choice(MILKS), rng.choice(EXTRAS)
    n = rng.choice([1, 1, 1, 2, 2, 3, 4])
    extra_text = "" if extra == "none" else f" and {extra}"
    order = rng.choice(TEMPLATES).format(n=NUMBERS[n], N=NUMBERS[n].capitalize(), size=size, drink=drink,
                                         plural="s" if n > 1 else "", milk=milk, extra_text=extra_text)
    output = json.dumps({"drink": drink, "size": size, "quantity": n, "milk": milk, "extra": extra})
    return {"id": f"demo-{split}-{i}", "task": "slot-filling-json", "prompt": INSTRUCTION + order + "\nJSON:",
            "output": output}


def main() -> None:
    rng = random.Random(20261123)
    out = Path(__file__).resolve().parent.parent / "tasc_edge" / "data" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 400), ("test", 24)):
        rows = [make_row(rng, i, split) for i in range(n)]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
