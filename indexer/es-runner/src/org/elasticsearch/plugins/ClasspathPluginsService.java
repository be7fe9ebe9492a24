// Lives in Elasticsearch's package because the hooks it overrides are package-private.
// Why: with no distribution to unpack, the node's modules (netty4 HTTP) are not in a
// modules/ directory but on the JVM classpath, so they are handed over as classes.
package org.elasticsearch.plugins;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.elasticsearch.action.admin.cluster.node.info.PluginsAndModules;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.jdk.ModuleQualifiedExportsService;

public class ClasspathPluginsService extends PluginsService {
    private final List<LoadedPlugin> loaded;
    private final PluginsAndModules described;

    public ClasspathPluginsService(Settings settings, Environment env, List<Class<? extends Plugin>> classes) {
        super(settings, env.configFile(), env.modulesFile(), env.pluginsFile());
        List<LoadedPlugin> all = new ArrayList<>(super.plugins());
        List<PluginRuntimeInfo> infos = new ArrayList<>(super.info().getPluginInfos());
        for (Class<? extends Plugin> cls : classes) {
            PluginDescriptor descriptor = new PluginDescriptor(cls.getName(), "classpath module", "NA",
                org.elasticsearch.Version.CURRENT.toString(), Integer.toString(Runtime.version().feature()),
                cls.getName(), null, List.of(), false, false, false, false);
            all.add(new LoadedPlugin(descriptor, loadPlugin(cls, settings, env.configFile())));
            infos.add(new PluginRuntimeInfo(descriptor));
        }
        this.loaded = List.copyOf(all);
        this.described = new PluginsAndModules(infos, super.info().getModuleInfos());
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return loaded;
    }

    @Override
    public PluginsAndModules info() {
        return described;
    }

    @Override
    protected void addServerExportsService(Map<String, List<ModuleQualifiedExportsService>> exports) {
        // the server runs from the classpath (unnamed module): nothing to export
    }
}
