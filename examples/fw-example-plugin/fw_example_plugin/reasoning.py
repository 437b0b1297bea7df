"""A toy reasoning parser: the model thinks between <reasoning> and </reasoning>."""

from __future__ import annotations

from fw.core.interfaces import DeltaMessage, ReasoningParser

START, END = "<reasoning>", "</reasoning>"


class ExampleThinkReasoningParser(ReasoningParser):
    name = "example-think"

    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        if END not in model_output:
            return None, model_output
        reasoning, _, content = model_output.partition(END)
        reasoning = reasoning.removeprefix(START)
        return reasoning, content or None

    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str) -> DeltaMessage | None:
        # Split the text seen so far, then report only what this delta added to each part.
        old_reasoning, old_content = self._split(previous_text)
        new_reasoning, new_content = self._split(current_text)
        reasoning = new_reasoning[len(old_reasoning):]
        content = new_content[len(old_content):]
        if not reasoning and not content:
            return None
        return DeltaMessage(content=content or None, reasoning_content=reasoning or None)

    @staticmethod
    def _split(text: str) -> tuple[str, str]:
        if END in text:
            reasoning, _, content = text.partition(END)
            return reasoning.removeprefix(START), content
        # Hold back a partial "</reasoning>" at the end until it is complete.
        for cut in range(len(END) - 1, 0, -1):
            if text.endswith(END[:cut]):
                text = text[:-cut]
                break
        return text.removeprefix(START), ""
