"""``arithmetic/plain`` and ``arithmetic/chat``: seeded arithmetic word problems with worked answers."""

from __future__ import annotations

import random

from crl.sae_training.corpus.doc import Doc, chat_text

_NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Isla",
    "Jamal",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olivia",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Zoe",
)
_ITEMS = (
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "shells",
    "stamps",
    "cards",
    "cupcakes",
    "balloons",
    "coins",
    "plants",
    "toy cars",
    "beads",
    "muffins",
)
_PLACES = ("the market", "the library", "school", "the park", "the bakery", "the fair")


def arithmetic_problem(rng: random.Random) -> tuple[str, str]:
    """One word problem and its worked answer, ending with the number as in GSM8K (``#### n``)."""
    a, b = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(8)
    if kind == 0:
        x, y = rng.randint(3, 90), rng.randint(2, 60)
        q = f"{a} has {x} {item}. {b} gives {a} {y} more. How many {item} does {a} have now?"
        steps, ans = f"{a} starts with {x} and gets {y} more, so {x} + {y} = {x + y}.", x + y
    elif kind == 1:
        x = rng.randint(20, 150)
        y = rng.randint(1, x - 1)
        q = f"{a} had {x} {item} and gave {y} of them to {b}. How many {item} does {a} have left?"
        steps, ans = f"{a} gives away {y} of {x}, so {x} - {y} = {x - y}.", x - y
    elif kind == 2:
        x, y = rng.randint(2, 12), rng.randint(3, 25)
        q = (
            f"{a} buys {x} boxes of {item} at {rng.choice(_PLACES)}. Each box holds {y} {item}. "
            f"How many {item} is that?"
        )
        steps, ans = f"There are {x} boxes with {y} each, so {x} * {y} = {x * y}.", x * y
    elif kind == 3:
        y, x = rng.randint(2, 9), rng.randint(2, 20)
        q = f"{a} shares {x * y} {item} equally among {y} friends. How many {item} does each friend get?"
        steps, ans = f"Each friend gets {x * y} / {y} = {x}.", x
    elif kind == 4:
        price, n = rng.randint(2, 15), rng.randint(2, 8)
        paid = (price * n // 10 + 1) * 10 + rng.choice((0, 10, 20))
        q = f"{a} buys {n} {item} for ${price} each and pays with ${paid}. How much change does {a} get?"
        cost = n * price
        steps = f"The {item} cost {n} * {price} = ${cost}. The change is {paid} - {cost} = ${paid - cost}."
        ans = paid - n * price
    elif kind == 5:
        speed, hours = rng.randint(3, 70), rng.randint(2, 9)
        q = f"{a} travels at {speed} miles per hour for {hours} hours. How many miles does {a} travel?"
        steps, ans = f"Distance is speed times time: {speed} * {hours} = {speed * hours} miles.", speed * hours
    elif kind == 6:
        pct, base = rng.choice((10, 20, 25, 50, 75)), rng.randint(1, 40) * 4
        q = f"A shop has {base} {item}. It sells {pct}% of them in the morning. How many {item} are left?"
        sold = base * pct // 100
        steps = f"It sells {pct}% of {base}, which is {sold}. So {base} - {sold} = {base - sold} are left."
        ans = base - sold
    else:
        x, y, z = rng.randint(5, 40), rng.randint(2, 6), rng.randint(1, 30)
        q = f"{a} collects {x} {item} each week for {y} weeks, then gives {z} to {b}. How many {item} does {a} have?"
        steps = f"{a} collects {x} * {y} = {x * y}. After giving {z} away, {x * y} - {z} = {x * y - z}."
        ans = x * y - z
    return q, f"{steps}\nThe answer is {ans}.\n#### {ans}"


def arithmetic_documents(tokenizer, n: int, seed: int) -> list[list[Doc]]:
    """`n` problems, one group each; a seeded coin renders each as plain text or through the chat template."""
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        q, a = arithmetic_problem(rng)
        group = f"arithmetic:{i}"
        if rng.random() < 0.5:
            groups.append([Doc("arithmetic/plain", group, f"Question: {q}\nAnswer: {a}")])
        else:
            groups.append([Doc("arithmetic/chat", group, chat_text(tokenizer, q, a))])
    return groups
