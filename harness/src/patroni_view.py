# Prints, as one JSON document, the cluster as Patroni 4.1.5's own DCS code reads it from etcd v3:
# patroni.dcs.get_dcs() with the etcd3 section, then get_cluster(), the call every Patroni HA cycle
# and patronictl start with. Patroni's parsers do not raise on a value they cannot read: they log and
# fall back to an empty value; so every log record of level WARNING or above is collected into
# "log", and the caller compares what Patroni parsed with the raw values in etcd.
# argv: scope namespace etcd3-hosts
import json
import logging
import sys

records = []


class Collect(logging.Handler):
    def emit(self, record):
        records.append('%s: %s' % (record.levelname, record.getMessage()))


logging.getLogger().addHandler(Collect(level=logging.WARNING))

from patroni.dcs import get_dcs  # noqa: E402

scope, namespace, hosts = sys.argv[1:4]
dcs = get_dcs({'scope': scope, 'namespace': namespace, 'name': 'praetor-test-reader',
               'etcd3': {'hosts': hosts}, 'retry_timeout': 10, 'ttl': 30, 'loop_wait': 10})
c = dcs.get_cluster()

out = {
    'initialize': c.initialize,
    'config': c.config.data if c.config else None,
    'leader': c.leader.name if c.leader else None,
    'leader_checkpoint_after_promote': c.leader.checkpoint_after_promote if c.leader else None,
    'members': {
        m.name: {
            'role': m.data.get('role'),
            'state': m.state,
            'conn_url': m.conn_url,
            'conn_kwargs': {k: v for k, v in m.conn_kwargs().items() if k in ('host', 'port', 'dbname')},
            'api_url': m.api_url,
            'lsn': m.lsn,
            'receive_lsn': m.receive_lsn,
            'replay_lsn': m.replay_lsn,
            'timeline': m.data.get('timeline'),
            'patroni_version': list(m.patroni_version) if m.patroni_version else None,
            'nofailover': m.nofailover,
            'tags': m.tags,
        }
        for m in c.members
    },
    'failover': None if not c.failover else {
        'leader': c.failover.leader,
        'candidate': c.failover.candidate,
        'scheduled_at': c.failover.scheduled_at.isoformat() if c.failover.scheduled_at else None,
    },
    'sync': {'leader': c.sync.leader, 'voters': c.sync.voters, 'members': c.sync.members,
             'quorum': c.sync.quorum},
    'history': c.history.lines if c.history else None,
    'status': {'optime': c.status.last_lsn, 'slots': c.status.slots, 'retain_slots': c.status.retain_slots},
    'timeline': c.timeline,
    'min_version': list(c.min_version) if c.min_version else None,
    'log': records,
}
print(json.dumps(out))
