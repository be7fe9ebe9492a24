// A Node whose plugins come from the classpath (see ClasspathPluginsService).
// In Elasticsearch's package because NodeConstruction and NodeServiceProvider are package-private.
package org.elasticsearch.node;

import java.util.List;

import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.ClasspathPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsService;

public class ClasspathNode extends Node {
    public ClasspathNode(Environment env, List<Class<? extends Plugin>> plugins) {
        super(NodeConstruction.prepareConstruction(env, new NodeServiceProvider() {
            @Override
            PluginsService newPluginService(Environment environment, Settings settings) {
                return new ClasspathPluginsService(settings, environment, plugins);
            }
        }, true));
    }

    @Override
    protected void configureNodeAndClusterIdStateListener(ClusterService clusterService) {
        // the stock listener reconfigures ES's own log4j layout, which this runner does not install
    }
}
