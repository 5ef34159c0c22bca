"""One incident, seven chat dialects: Slack, Teams, Discord, DingTalk, Feishu/Lark, WeCom, JSON.

Every format shows the same things from :class:`sinks._items.Summary`: the title,
severity, resource, score and the reasons behind it, the actions taken or waiting
for approval, and how to roll each applied action back. Only the wire shape
differs. Platform length limits are respected by truncation, never by dropping a
section silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.models import Item
from pipeline.serde import to_jsonable
from sinks._items import Summary

_COLORS = {
    "critical": "#8B0000",
    "high": "#E01E5A",
    "medium": "#ECB22E",
    "low": "#2EB67D",
    "informational": "#808080",
    "-": "#4A90D9",
}
_FEISHU_TEMPLATES = {"critical": "carmine", "high": "red", "medium": "orange", "low": "green",
                     "informational": "grey", "-": "blue"}
MAX_REASONS = 8


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def color(summary: Summary) -> str:
    return _COLORS.get(summary.severity, "#808080")


def score_text(summary: Summary) -> str:
    return "-" if summary.score is None else f"{summary.score}/100"


def action_texts(summary: Summary) -> list[str]:
    lines = []
    for a in summary.taken:
        line = f"{a.kind}: {a.status} ({a.mode})"
        if a.reason:
            line += f" - {a.reason}"
        if a.rollback:
            line += f"; roll back with `{a.rollback}`"
        lines.append(line)
    for a in summary.awaiting_approval:
        lines.append(f"{a.kind}: waiting for approval - `riposte approve {a.action_id}`")
    return lines


def reason_texts(summary: Summary) -> list[str]:
    shown = list(summary.reasons[:MAX_REASONS])
    if len(summary.reasons) > MAX_REASONS:
        shown.append(f"... and {len(summary.reasons) - MAX_REASONS} more")
    return shown


def markdown(summary: Summary, *, link: str | None = None, bullet: str = "- ") -> str:
    """A plain markdown rendering most chat platforms accept."""
    out = [f"**{summary.title}**", "",
           f"**Severity:** {summary.severity}  **Score:** {score_text(summary)}",
           f"**Resource:** {summary.resource}"]
    if summary.mitre:
        out.append(f"**MITRE ATT&CK:** {', '.join(summary.mitre)}")
    reasons = reason_texts(summary)
    if reasons:
        out += ["", "**Why:**", *(bullet + r for r in reasons)]
    actions = action_texts(summary)
    if actions:
        out += ["", "**Actions:**", *(bullet + a for a in actions)]
    out += ["", f"`{summary.kind}` `{summary.item_id}`"]
    if link:
        out.append(f"[Open]({link})")
    return "\n".join(out)


def slack(summary: Summary, item: Item, link: str | None) -> dict[str, Any]:
    fields = [
        {"type": "mrkdwn", "text": f"*Severity:*\n{summary.severity}"},
        {"type": "mrkdwn", "text": f"*Score:*\n{score_text(summary)}"},
        {"type": "mrkdwn", "text": f"*Resource:*\n{_cut(summary.resource, 1900)}"},
        {"type": "mrkdwn", "text": f"*Kind:*\n{summary.kind}"},
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(summary.title, 150)}},
        {"type": "section", "fields": fields},
    ]
    reasons = reason_texts(summary)
    if reasons:
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": _cut("*Why:*\n" + "\n".join(f"• {r}" for r in reasons),
                                           3000)}})
    actions = action_texts(summary)
    if actions:
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": _cut("*Actions:*\n" + "\n".join(f"• {a}" for a in actions),
                                           3000)}})
    context = f"`{summary.item_id}`" + (f" · MITRE {', '.join(summary.mitre)}"
                                        if summary.mitre else "")
    if link:
        context += f" · <{link}|open>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(context,
                                                                                  3000)}]})
    text = f"[{summary.severity}] {summary.title}"
    return {"text": _cut(text, 3000), "blocks": blocks}


def teams_messagecard(summary: Summary, link: str | None) -> dict[str, Any]:
    facts = [{"name": "Severity", "value": summary.severity},
             {"name": "Score", "value": score_text(summary)},
             {"name": "Resource", "value": summary.resource},
             {"name": "Item", "value": summary.item_id}]
    if summary.mitre:
        facts.append({"name": "MITRE ATT&CK", "value": ", ".join(summary.mitre)})
    sections: list[dict[str, Any]] = [{"activityTitle": summary.title, "facts": facts}]
    reasons = reason_texts(summary)
    if reasons:
        sections.append({"title": "Why", "text": "\n\n".join(f"- {r}" for r in reasons)})
    actions = action_texts(summary)
    if actions:
        sections.append({"title": "Actions", "text": "\n\n".join(f"- {a}" for a in actions)})
    card: dict[str, Any] = {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "themeColor": color(summary).lstrip("#"),
        "summary": _cut(summary.title, 200),
        "title": _cut(f"[{summary.severity}] {summary.title}", 300),
        "sections": sections,
    }
    if link:
        card["potentialAction"] = [{"@type": "OpenUri", "name": "Open",
                                    "targets": [{"os": "default", "uri": link}]}]
    return card


def teams_adaptive(summary: Summary, link: str | None) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "size": "Large", "weight": "Bolder", "wrap": True,
         "text": summary.title},
        {"type": "FactSet", "facts": [
            {"title": "Severity", "value": summary.severity},
            {"title": "Score", "value": score_text(summary)},
            {"title": "Resource", "value": summary.resource},
            {"title": "Item", "value": summary.item_id}]},
    ]
    for heading, lines in (("Why", reason_texts(summary)), ("Actions", action_texts(summary))):
        if lines:
            body.append({"type": "TextBlock", "weight": "Bolder", "text": heading})
            body.append({"type": "TextBlock", "wrap": True,
                         "text": "\n".join(f"- {line}" for line in lines)})
    content: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard", "version": "1.4", "body": body}
    if link:
        content["actions"] = [{"type": "Action.OpenUrl", "title": "Open", "url": link}]
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "content": content}]}


def discord(summary: Summary, link: str | None) -> dict[str, Any]:
    fields = [{"name": "Severity", "value": summary.severity, "inline": True},
              {"name": "Score", "value": score_text(summary), "inline": True},
              {"name": "Resource", "value": _cut(summary.resource, 1024), "inline": False}]
    reasons = reason_texts(summary)
    if reasons:
        fields.append({"name": "Why", "value": _cut("\n".join(f"• {r}" for r in reasons), 1024),
                       "inline": False})
    actions = action_texts(summary)
    if actions:
        fields.append({"name": "Actions",
                       "value": _cut("\n".join(f"• {a}" for a in actions), 1024),
                       "inline": False})
    embed: dict[str, Any] = {
        "title": _cut(summary.title, 256),
        "description": _cut(f"`{summary.kind}` `{summary.item_id}`", 4096),
        "color": int(color(summary).lstrip("#"), 16),
        "fields": fields[:25],
    }
    if summary.time is not None:
        embed["timestamp"] = summary.time.isoformat()
    if link:
        embed["url"] = link
    return {"embeds": [embed], "allowed_mentions": {"parse": []}}


def dingtalk(summary: Summary, link: str | None) -> dict[str, Any]:
    # DingTalk markdown wants two line breaks between paragraphs.
    text = markdown(summary, link=link).replace("\n", "\n\n")
    return {"msgtype": "markdown",
            "markdown": {"title": _cut(f"[{summary.severity}] {summary.title}", 100),
                         "text": _cut(text, 5000)}}


def feishu(summary: Summary, link: str | None, msg_type: str) -> dict[str, Any]:
    if msg_type == "post":
        rows: list[list[dict[str, Any]]] = [
            [{"tag": "text", "text": f"Severity: {summary.severity}  Score: "
                                     f"{score_text(summary)}"}],
            [{"tag": "text", "text": f"Resource: {summary.resource}"}],
        ]
        rows += [[{"tag": "text", "text": f"Why: {r}"}] for r in reason_texts(summary)]
        rows += [[{"tag": "text", "text": f"Action: {a}"}] for a in action_texts(summary)]
        if link:
            rows.append([{"tag": "a", "text": "Open", "href": link}])
        return {"msg_type": "post", "content": {"post": {"en_us": {
            "title": _cut(summary.title, 200), "content": rows}}}}
    elements: list[dict[str, Any]] = [
        {"tag": "div", "text": {"tag": "lark_md", "content": markdown(summary)}}]
    if link:
        elements.append({"tag": "action", "actions": [
            {"tag": "button", "text": {"tag": "plain_text", "content": "Open"},
             "url": link, "type": "default"}]})
    return {"msg_type": "interactive", "card": {
        "config": {"wide_screen_mode": True},
        "header": {"title": {"tag": "plain_text", "content": _cut(summary.title, 200)},
                   "template": _FEISHU_TEMPLATES.get(summary.severity, "blue")},
        "elements": elements}}


def wecom(summary: Summary, link: str | None) -> dict[str, Any]:
    # WeCom caps markdown content at 4096 bytes (UTF-8).
    content = markdown(summary, link=link)
    encoded = content.encode()
    if len(encoded) > 4096:
        content = encoded[:4090].decode("utf-8", "ignore") + "…"
    return {"msgtype": "markdown", "markdown": {"content": content}}


def generic(summary: Summary, item: Item) -> dict[str, Any]:
    return {
        "kind": summary.kind,
        "title": summary.title,
        "severity": summary.severity,
        "score": summary.score,
        "resource": summary.resource,
        "reasons": list(summary.reasons),
        "actions": [
            {"id": a.action_id, "kind": a.kind, "status": a.status, "mode": a.mode,
             "reason": a.reason, "rollback": a.rollback} for a in summary.actions],
        "item": to_jsonable(item),
    }


Renderer = Callable[[Summary, Item], dict[str, Any]]


def renderer(fmt: str, *, link: str | None = None, teams_card: str = "messagecard",
             feishu_msg_type: str = "interactive") -> Renderer:
    """The function that turns a summary (and its item) into ``fmt``'s request body."""
    table: dict[str, Renderer] = {
        "slack": lambda s, i: slack(s, i, link),
        "teams": (lambda s, i: teams_adaptive(s, link)) if teams_card == "adaptive"
        else (lambda s, i: teams_messagecard(s, link)),
        "discord": lambda s, i: discord(s, link),
        "dingtalk": lambda s, i: dingtalk(s, link),
        "feishu": lambda s, i: feishu(s, link, feishu_msg_type),
        "wecom": lambda s, i: wecom(s, link),
        "generic": generic,
    }
    return table[fmt]
