// Which partition the Java client's default partitioner gives each customer id, read from a real
// KafkaProducer (kafka-clients, from Maven Central with the broker's jars): one record per id on
// stdin, keyed by the id as a UTF-8 string (StringSerializer), sent to the topic of argv[1] on the
// cluster of argv[0]; prints "<partition> <id>" per line from the broker's acknowledgement.
// Run: java -cp '<jars>/*' PartitionOf.java <bootstrap> <topic> < ids
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

public class PartitionOf {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("enable.idempotence", "true");
        props.put("acks", "all");
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", StringSerializer.class.getName());
        List<String> ids = new ArrayList<>();
        try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            for (String line = in.readLine(); line != null; line = in.readLine()) {
                ids.add(line);
            }
        }
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            for (String id : ids) {
                sent.add(producer.send(new ProducerRecord<>(args[1], id, "")));  // the default partitioner
            }
            producer.flush();
            StringBuilder out = new StringBuilder();
            for (int i = 0; i < ids.size(); i++) {
                out.append(sent.get(i).get().partition()).append(' ').append(ids.get(i)).append('\n');
            }
            System.out.write(out.toString().getBytes(StandardCharsets.UTF_8));
            System.out.flush();
        }
    }
}
