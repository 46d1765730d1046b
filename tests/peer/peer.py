"""A scripted XMPP client that plays the distributor (Conversations) in xup's tests.

It is a real c2s client (slixmpp) so that the tests exercise xup through a real XMPP server. The
test harness drives it with one JSON command per line on stdin and reads one JSON event per line
from stdout:

commands
  {"cmd": "answer", "ref": N, "with": "result" | "silent" | "late" | "<stanza error condition>"}
      how to answer the <push> IQs that arrive from now on (default: result); "late" answers
      result after "delay_ms" (in the command) and then reports "answered"; with "application",
      only for that app's pushes (an app's own setting wins over the general one); acknowledged
      with an "ack" event carrying the same ref once in force
  {"cmd": "drop", "ref": N}
      (with --stream-management) lose the TCP connection without closing the stream, as a phone
      whose network goes away does; acknowledged with an "ack" once the connection is gone
  {"cmd": "resume", "ref": N}
      (with --stream-management) connect again and resume the session (XEP-0198); reports
      "resumed", or "online" if the server started a new session instead
  {"cmd": "presence", "ref": N, "to": JID, "minimum_urgency": WORD | null}
      send directed presence (how Conversations tells a push provider it is back), with xup's
      <urgency minimum=WORD/> in it if given; acknowledged with an "ack" event once sent
  {"cmd": "message", "ref": N, "to": JID, "body": TEXT}
      send a chat message; acknowledged with an "ack" event once sent
  {"cmd": "iq", "ref": N, "type": "get" | "set", "to": JID, "xml": "<payload/>"}
      send an IQ and report its answer as an "iq" event carrying the same ref
  {"cmd": "quit"}
      disconnect cleanly and exit

events
  {"event": "online", "jid": FULL_JID}
  {"event": "resumed"}
  {"event": "ack", "ref": N}
  {"event": "push", "id", "from", "to", "application", "instance", "message_id", "urgency",
   "data"}   (message_id and urgency: the <push>'s own attributes, null when absent)
  {"event": "answered", "id"}                       (after a late answer was sent)
  {"event": "message", "id", "from", "to", "type", "subject", "body"}
      (a <message> with a subject: sum7's dialect of UnifiedPush)
  {"event": "iq", "ref": N, "type": "result" | "error", "condition", "error_type", "text",
   "payload": {"name", "ns", "attrs", "children": [{"name", "attrs", "text"}], "xml"} | null}
      (for an error, "payload" is the first child that is not <error>, if any)
  {"event": "offline"}
"""

import argparse
import asyncio
import json
import sys
import threading
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

UP_NS = "http://gultsch.de/xmpp/drafts/unified-push"
URGENCY_NS = "urn:xup:urgency:0"


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Peer(slixmpp.ClientXMPP):
    def __init__(self, jid, password, port, stream_management):
        super().__init__(jid, password)
        self.port = port
        # Loopback tests run the XMPP server without TLS.
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        # How to answer pushes: (mode, delay in ms), in general and per application.
        self.answering = ("result", 0)
        self.answering_app = {}
        # Set when the process should end: after "quit", or when the harness goes away.
        self.done = asyncio.get_event_loop().create_future()
        self.dropped = None
        if stream_management:
            self.register_plugin("xep_0198")
        # Answers pings (XEP-0199), as Conversations does, with no keepalive of its own.
        self.register_plugin("xep_0199", {"keepalive": False})
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("session_resumed", self.on_resumed)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.register_handler(
            Callback(
                "unified-push",
                MatchXPath("{jabber:client}iq/{%s}push" % UP_NS),
                self.on_push,
            )
        )
        self.add_event_handler("message", self.on_message)

    async def on_start(self, _event):
        self.send_presence()
        emit(event="online", jid=str(self.boundjid.full))

    def on_resumed(self, _event):
        emit(event="resumed")

    def on_disconnected(self, _event):
        emit(event="offline")
        if self.dropped is not None:
            self.dropped.set_result(None)
            self.dropped = None
        elif not self.done.done():
            # Quit, or lost the server: either way this client is over.
            self.done.set_result(None)

    def quit(self):
        if self.transport is None:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.disconnect()

    async def drop(self, ref):
        self.dropped = asyncio.get_event_loop().create_future()
        self.abort()
        await self.dropped
        emit(event="ack", ref=ref)

    def on_push(self, iq):
        push = iq.xml.find("{%s}push" % UP_NS)
        emit(
            event="push",
            id=iq["id"],
            to=str(iq["to"]),
            **{"from": str(iq["from"])},
            application=push.get("application"),
            instance=push.get("instance"),
            message_id=push.get("id"),
            urgency=push.get("urgency"),
            data=push.text or "",
        )
        mode, delay_ms = self.answering_app.get(push.get("application"), self.answering)
        if mode == "silent":
            return
        if mode == "late":
            asyncio.get_event_loop().call_later(
                delay_ms / 1000, self.answer_late, iq.reply(), iq["id"]
            )
            return
        reply = iq.reply()
        if mode != "result":
            reply["type"] = "error"
            reply["error"]["condition"] = mode
            reply["error"]["type"] = "cancel"
        reply.send()

    def on_message(self, msg):
        if msg.xml.find("{jabber:client}subject") is None:
            return
        emit(
            event="message",
            id=msg["id"],
            to=str(msg["to"]),
            **{"from": str(msg["from"])},
            type=msg["type"],
            subject=msg["subject"],
            body=msg["body"],
        )

    def answer_late(self, reply, push_id):
        reply.send()
        emit(event="answered", id=push_id)

    async def send_iq(self, ref, kind, to, payload):
        iq = self.Iq()
        iq["type"] = kind
        iq["to"] = to
        iq.append(ET.fromstring(payload))
        try:
            answer = await iq.send(timeout=10)
        except IqError as e:
            err = e.iq["error"]
            others = [c for c in e.iq.xml if not c.tag.endswith("}error")]
            emit(
                event="iq",
                ref=ref,
                type="error",
                condition=err["condition"],
                error_type=err["type"],
                text=err["text"],
                payload=describe(others[0]) if others else None,
            )
            return
        except IqTimeout:
            emit(event="iq", ref=ref, type="timeout", payload=None)
            return
        children = list(answer.xml)
        payload = describe(children[0]) if children else None
        emit(event="iq", ref=ref, type="result", payload=payload)

    def command(self, line):
        cmd = json.loads(line)
        if cmd["cmd"] == "answer":
            answering = (cmd["with"], cmd.get("delay_ms", 0))
            if "application" in cmd:
                self.answering_app[cmd["application"]] = answering
            else:
                self.answering = answering
            emit(event="ack", ref=cmd["ref"])
        elif cmd["cmd"] == "drop":
            asyncio.ensure_future(self.drop(cmd["ref"]))
        elif cmd["cmd"] == "resume":
            self.connect("127.0.0.1", self.port)
        elif cmd["cmd"] == "message":
            self.send_message(mto=cmd["to"], mbody=cmd["body"], mtype="chat")
            emit(event="ack", ref=cmd["ref"])
        elif cmd["cmd"] == "presence":
            presence = self.make_presence(pto=cmd["to"])
            if cmd.get("minimum_urgency"):
                urgency = ET.Element("{%s}urgency" % URGENCY_NS)
                urgency.set("minimum", cmd["minimum_urgency"])
                presence.xml.append(urgency)
            presence.send()
            emit(event="ack", ref=cmd["ref"])
        elif cmd["cmd"] == "iq":
            asyncio.ensure_future(
                self.send_iq(cmd["ref"], cmd["type"], cmd["to"], cmd["xml"])
            )
        elif cmd["cmd"] == "quit":
            self.quit()


def describe(element):
    """An IQ payload as the harness reads it: its name, namespace, attributes and children."""
    ns, _, name = element.tag[1:].partition("}")
    return {
        "name": name,
        "ns": ns,
        "attrs": dict(element.attrib),
        "children": [
            {"name": c.tag.partition("}")[2], "attrs": dict(c.attrib), "text": c.text or ""}
            for c in element
        ],
        "xml": ET.tostring(element, encoding="unicode"),
    }


def read_commands(peer, loop):
    for line in sys.stdin:
        if line.strip():
            loop.call_soon_threadsafe(peer.command, line)
    # The harness went away: leave rather than linger as an orphan.
    loop.call_soon_threadsafe(peer.quit)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream-management", action="store_true")
    args = parser.parse_args()

    loop = asyncio.get_event_loop()
    peer = Peer(args.jid, args.password, args.port, args.stream_management)
    threading.Thread(target=read_commands, args=(peer, loop), daemon=True).start()
    peer.connect("127.0.0.1", args.port)
    loop.run_until_complete(peer.done)


if __name__ == "__main__":
    main()
