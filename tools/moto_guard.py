#!/usr/bin/env python3
"""Run a moto server on 127.0.0.1 for as long as its parent needs it.

Prints one line, `{"endpoint": "http://127.0.0.1:PORT"}`, once the server accepts
requests. With --until-stdin-closes it exits when its standard input reaches EOF:
the test harness keeps the pipe open for its lifetime, so the server dies with the
tests however they end (even on SIGKILL), and never outlives them.

DynamoDB requests are applied one at a time. moto's threaded server checks a
condition and then writes without a lock, so two concurrent conditional writes
(or transactions) to one item can both succeed: a job claimed twice, a bill added
twice. DynamoDB serializes writes to an item and makes transactions serializable;
one lock around moto's DynamoDB handler gives the local AWS that guarantee (it
costs little: moto's Python is serialized by the GIL anyway). Other services
keep their threads, so an SQS long poll never blocks a DynamoDB call.

Transactions are made cheap: moto deep-copies every table a transaction touches
(to roll back on failure), so each transaction costs time in proportion to the
whole table, and a local stack that has run for a while (an audit log of
thousands of entries) answers in seconds. With writes serialized, checking every
condition before writing anything is atomic, and only the touched items need a
copy for the rare failure half-way.
"""

import argparse
import json
import signal
import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import ThreadedMotoServer

_DYNAMODB_LOCK = threading.Lock()
_call_dynamodb = DynamoHandler.call_action


def _serialized_call_action(self):  # type: ignore[no-untyped-def]
    with _DYNAMODB_LOCK:
        return _call_dynamodb(self)


DynamoHandler.call_action = _serialized_call_action  # type: ignore[method-assign]


def _transact_write_items(self, transact_items):  # type: ignore[no-untyped-def]
    """moto's TransactWriteItems (same checks, same errors), without table copies."""
    import copy

    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    steps = []
    seen = set()
    errors = []
    for item in transact_items:
        if len(list(item.keys())) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(item.items()))
        original_item = None
        try:
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            if op_type == "Put":
                table = self.get_table(table_name)
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            unique = (str(table_name), str(dict(sorted(key.items()))))
            if unique in seen:
                raise MultipleTransactionsException()
            seen.add(unique)
            current = self.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            if condition is not None:
                check = get_filter_expression(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues"))
                if not check.expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        original_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original_item)
            steps.append((op_type, op, table_name, key, copy.deepcopy(current)))
            errors.append((None, None, None))
        except MultipleTransactionsException:
            raise
        except ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))
        except Exception as e:  # noqa: BLE001 - reported per item, as moto does
            errors.append((type(e).__name__, str(e), original_item))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)
    applied = []
    try:
        for op_type, op, table_name, key, before in steps:
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                self.put_item(table_name, op["Item"], expression_attribute_names=names,
                              expression_attribute_values=values)
            elif op_type == "Delete":
                self.delete_item(table_name, key)
            elif op_type == "Update":
                self.update_item(table_name, key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=names, expression_attribute_values=values)
            applied.append((table_name, key, before))
    except Exception:
        for table_name, key, before in reversed(applied):
            if before is None:
                self.delete_item(table_name, key)
            else:
                self.put_item(table_name, before.to_json()["Attributes"])
        raise


from moto.dynamodb.models import DynamoDBBackend  # noqa: E402

DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--until-stdin-closes", action="store_true")
    args = parser.parse_args()

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(json.dumps({"endpoint": f"http://{host}:{port}"}), flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.until_stdin_closes:
        def watch_stdin() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            done.set()
        threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
