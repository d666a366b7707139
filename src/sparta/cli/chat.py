"""`sparta chat`: a conversation in the terminal with an SFT run, an exported or merged causal LM, or a base
model. Each line read from standard input is a user turn; the answer is streamed back and kept in the history
(the oldest turns dropped when it outgrows the model's context). "/reset" clears the history, "/exit" or the
end of input ends the chat."""

from __future__ import annotations

import argparse
import sys

from sparta.cli.generate import add_generation_arguments, open_for_generation, sampling, streamer
from sparta.runs import generate_texts, trim_history

EXIT, RESET = "/exit", "/reset"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with an SFT run, an exported or merged causal LM, or a base model in the terminal",
        description="A multi-turn conversation: type a message and press enter; the answer streams back. "
        f"{RESET} clears the history, {EXIT} (or end of input, Ctrl-D) quits.",
    )
    add_generation_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = open_for_generation(args)
    options = sampling(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.dir}; {RESET} clears the history, {EXIT} quits")
    history: list[dict[str, str]] = []
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == EXIT:
            return 0
        text = line.strip()
        if text == RESET:
            history = []
            print("(history cleared)")
            continue
        if not text:
            continue
        turns = history + [{"role": "user", "content": text}]
        turns = trim_history(loaded, turns, args.max_new_tokens, args.system)
        (answer,) = generate_texts(loaded, [turns], streamer=streamer(loaded), **options)
        history = turns + [{"role": "assistant", "content": answer.strip()}]
