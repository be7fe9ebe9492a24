// Starts one Elasticsearch 8 node in this JVM, bound to 127.0.0.1 only, for the index tests.
// Usage: java -cp 'target/classes:target/dependency/*' slidearchive.EsNode --home DIR
//        [--http-port 9250] [--transport-port 9350] [--cluster-name slidearchive-test]
package slidearchive;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.ClasspathNode;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.netty4.Netty4Plugin;

public class EsNode {
    public static void main(String[] args) throws Exception {
        String home = "es-home";
        String httpPort = "9250";
        String transportPort = "9350";
        String clusterName = "slidearchive-test";
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--home" -> home = args[i + 1];
                case "--http-port" -> httpPort = args[i + 1];
                case "--transport-port" -> transportPort = args[i + 1];
                case "--cluster-name" -> clusterName = args[i + 1];
                default -> throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }
        Path homePath = Path.of(home).toAbsolutePath();
        for (String sub : List.of("data", "logs", "config", "modules", "plugins")) {
            Files.createDirectories(homePath.resolve(sub));
        }
        Settings settings = Settings.builder()
            .put("path.home", homePath.toString())
            .put("path.data", homePath.resolve("data").toString())
            .put("path.logs", homePath.resolve("logs").toString())
            .put("cluster.name", clusterName)
            .put("node.name", "node-1")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("transport.port", transportPort)
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            // a test node on a shared disk must not turn indices read-only when the disk fills
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.destructive_requires_name", false)
            .build();
        LogConfigurator.configureESLogging();
        LogConfigurator.configureWithoutConfig(settings);
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), homePath.resolve("config"), () -> "node-1");
        Node node = new ClasspathNode(env, List.of(Netty4Plugin.class));
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
            stopped.countDown();
        }));
        node.start();
        watchParent();
        System.out.println("ES_NODE_STARTED http://127.0.0.1:" + httpPort);
        System.out.flush();
        stopped.await();
    }

    /** With ES_PARENT_PID set (the test process), exit when it is gone: no orphaned nodes after a crash. */
    private static void watchParent() {
        String parent = System.getenv("ES_PARENT_PID");
        if (parent == null || parent.isBlank()) {
            return;
        }
        long pid = Long.parseLong(parent.trim());
        Thread watcher = new Thread(() -> {
            while (ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false)) {
                try {
                    Thread.sleep(2000);
                } catch (InterruptedException e) {
                    return;
                }
            }
            System.exit(0); // runs the shutdown hook, which closes the node
        }, "parent-watch");
        watcher.setDaemon(true);
        watcher.start();
    }
}
