// The README's Go recipe as a program: usage events to meterline from a Go service.
//
// Each line on stdin is a usage event as JSON ({"event_id", "customer_id", "meter", "quantity",
// "unit", "timestamp" (epoch ms), "source", "attributes"}); each becomes one meterline.UsageEvent
// record on the topic, as meterline needs it:
//   - the value in Confluent's wire format (magic byte, schema id, Avro body), the schema
//     registered under the subject meterline.UsageEvent (the record name, as the SDK registers it);
//   - the key the customer id as UTF-8, the partition the Java client's default partitioner picks
//     (Kafka's murmur2: franz-go's sticky key partitioner with its default hasher);
//   - idempotent, acks=all (franz-go's defaults).
// A line {"raw": "<base64>", "key": "<base64>"} is sent as it is (the tests' malformed records).
// It prints "<partition> <key>" for every record the brokers acknowledged.
//
// Run: go run . -brokers 127.0.0.1:9092 -registry http://127.0.0.1:8081 -topic usage.events \
//        -schema ../../schemas/avro/usage_event.v1.avsc < events.jsonl
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
)

// UsageEvent is schemas/avro/usage_event.v1.avsc.
type UsageEvent struct {
	EventID    string            `avro:"event_id"`
	CustomerID string            `avro:"customer_id"`
	Meter      string            `avro:"meter"`
	Quantity   int64             `avro:"quantity"`
	Unit       string            `avro:"unit"`
	Timestamp  time.Time         `avro:"timestamp"` // timestamp-millis
	Source     string            `avro:"source"`
	Attributes map[string]string `avro:"attributes"`
}

type line struct {
	EventID    string            `json:"event_id"`
	CustomerID string            `json:"customer_id"`
	Meter      string            `json:"meter"`
	Quantity   int64             `json:"quantity"`
	Unit       string            `json:"unit"`
	Timestamp  int64             `json:"timestamp"`
	Source     string            `json:"source"`
	Attributes map[string]string `json:"attributes"`
	Raw        []byte            `json:"raw"` // base64 in JSON
	Key        []byte            `json:"key"`
}

const subject = "meterline.UsageEvent"

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "comma-separated bootstrap servers")
	registry := flag.String("registry", "http://127.0.0.1:8081", "the Schema Registry's URL")
	topic := flag.String("topic", "usage.events", "meterline's usage topic")
	schemaPath := flag.String("schema", "usage_event.v1.avsc", "schemas/avro/usage_event.v1.avsc")
	flag.Parse()
	ctx := context.Background()

	text, err := os.ReadFile(*schemaPath)
	check(err)
	schema := avro.MustParse(string(text))
	registryClient, err := sr.NewClient(sr.URLs(*registry))
	check(err)
	registered, err := registryClient.CreateSchema(ctx, subject, sr.Schema{Schema: string(text)})
	check(err)
	var serde sr.Serde
	serde.Register(registered.ID, UsageEvent{}, sr.EncodeFn(func(v any) ([]byte, error) {
		return avro.Marshal(schema, v)
	}))

	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.DefaultProduceTopic(*topic),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // nil: murmur2, as the Java client
		kgo.RequiredAcks(kgo.AllISRAcks()),
	)
	check(err)
	defer client.Close()

	input := bufio.NewScanner(os.Stdin)
	input.Buffer(make([]byte, 1<<20), 1<<20)
	for input.Scan() {
		var in line
		check(json.Unmarshal(input.Bytes(), &in))
		record := &kgo.Record{Key: in.Key, Value: in.Raw}
		if in.Raw == nil {
			event := UsageEvent{in.EventID, in.CustomerID, in.Meter, in.Quantity, in.Unit,
				time.UnixMilli(in.Timestamp).UTC(), in.Source, in.Attributes}
			if event.Attributes == nil {
				event.Attributes = map[string]string{}
			}
			value, err := serde.Encode(event)
			check(err)
			record = &kgo.Record{Key: []byte(in.CustomerID), Value: value}
		}
		client.Produce(ctx, record, func(r *kgo.Record, err error) {
			check(err)
			fmt.Printf("%d %s\n", r.Partition, r.Key)
		})
	}
	check(input.Err())
	check(client.Flush(ctx))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
