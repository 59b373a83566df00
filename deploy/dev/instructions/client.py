"""`make instructions`' client: N chats one after another over one connection, turn by
turn for eight users, English and Chinese, so retrieval finds earlier facts. Exits
non-zero if any chat fails (the counts would be of error paths)."""
import http.client
import json
import sys

count, port = int(sys.argv[1]), int(sys.argv[2])
TEXTS = [
    "My cat is called Doudou and she likes fish",
    "What is my cat called?",
    "Tell me about the weather in Paris today",
    "我的猫叫豆豆。",
    "我的猫叫什么名字？",
]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
failed = 0
for n in range(count):
    body = json.dumps({"user_id": f"instructions-{n % 8}", "text": TEXTS[n % len(TEXTS)]})
    connection.request("POST", "/chat", body, {"content-type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        failed += 1
        print(response.status, answer[:300], file=sys.stderr)
print(f"{count} chats, {failed} failed", file=sys.stderr)
sys.exit(1 if failed else 0)
