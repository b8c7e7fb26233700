"""Small built-in English word lists for the heuristic extractor (torua.extract); no model, no download.

- `is_common(word)`: is this an ordinary English word (or an inflection of one: "Starting",
  "Enabled", "Adds")? A sentence opens with a capital whatever its first word is, so a lone word
  there is a name only if it is not an ordinary word (or the text capitalises it elsewhere too).
- `GENERIC`: words documentation uses as labels, types and literal values ("Description",
  "Default", "NULL", "String", "Optional"): never entities, wherever they appear. `KEYWORDS`:
  Python keywords, which a code span may hold without naming anything.
- `leading(word)`: verbs and adverbs that open instructions ("Install Docker", "Using FastAPI"),
  dropped from the front of a capitalised run that starts a sentence; `is_inflection` and `is_verb`
  tell -ing/-ed forms and verbs ("founded", "taught") apart from other words.
- `singular(word)`: the singular of a regular English plural ("nodes" -> "node", "libraries" ->
  "library", "processes" -> "process"), or the word unchanged; used by `entity_id`.

The common-word list holds about 4,500 words, mostly base forms: inflections are recognised by
stripping regular endings and a few prefixes ("precomputed"), so the list stays short. It was
written by hand for technical documentation and plain prose, and leaves out acronyms and words that
are mostly names; a word that is both ("Grace", "Frank") is a name only where its capital is not
explained by the start of a sentence.
"""

from __future__ import annotations

__all__ = ["COMMON", "GENERIC", "LEADING", "KEYWORDS", "is_common", "is_inflection", "is_verb", "leading", "singular"]

_FUNCTION_WORDS = """
a about above across after afterwards again against ago all almost alone along already also although always
am among amongst an and another any anybody anyone anything anyway anywhere are around as aside at away
back be because been before beforehand behind being below beneath beside besides between beyond both but by
can cannot could did do does doing done down during each either else elsewhere enough even ever every
everybody everyone everything everywhere except far few for from further furthermore had has have having he
hence her here hers herself him himself his how however i if in inside instead into is it its itself just
least less lest let like likewise many may maybe me meanwhile might mine more moreover most mostly much must
my myself near nearly neither never nevertheless next no nobody none nonetheless nor not nothing now nowhere
of off often on once one only onto or other others otherwise ought our ours ourselves out outside over own
per perhaps please quite rather really same several shall she should since so some somebody someone
something sometime sometimes somewhat somewhere soon still such than that the their theirs them themselves
then there thereby therefore these they this those though through throughout thus till to together too
toward towards under underneath unless unlike until up upon us usually very via was we well were what
whatever when whenever where whereas whereby wherever whether which while who whoever whole whom whose why
will with within without would yet you your yours yourself yourselves
zero two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred thousand
million billion first second third fourth fifth last half double single triple once twice
yes yeah hello hi hey thanks thank sorry oh ok okay wow
"""

_VERBS = """
accept access accomplish achieve acknowledge acquire act adapt add address adjust admit adopt advance advise
affect afford agree aim alert allocate allow alter analyse analyze announce annotate answer anticipate
appear append apply appreciate approach approve argue arise arrange arrive ask assemble assert assess assign
assist associate assume attach attack attempt attend attract authenticate authorize avoid await awake
back bake balance ban base bear beat become begin behave believe belong bend benefit bet bind bite blame
block blow boil book boost boot borrow bother bounce break breathe bring broadcast browse build bump burn
buy calculate call cancel capture care carry cast catch cause cease change charge chat check cheer choose
cite claim clarify clean clear click climb clone close collapse collect combine come comment commit
communicate compare compete compile complain complete comply compose compress compute concat concatenate
concern conclude conduct configure confirm conflict confuse connect consider consist constrain construct
consult consume contact contain continue contribute control convert convince cook copy correct correspond
cost count couple cover crash crawl create credit cross crush cry cure customize cut damage dance deal
debug decide declare decline decode decorate decouple decrease decrypt dedicate deduplicate default defeat
defend defer define delay delegate delete deliver demand demonstrate deny depend deploy deprecate derive
describe deserialize deserve design desire destroy detach detect determine develop devote diagnose dictate
die differ dig disable disagree disappear discard disconnect discover discuss dismiss dispatch display
dispose distinguish distribute dive divide document dominate donate double doubt download drag drain draw
dream dress drift drink drive drop dump duplicate earn ease eat echo edit educate elect eliminate embed
embrace emerge emit emphasize employ empty emulate enable encapsulate enclose encode encounter encourage
encrypt end endorse enforce engage enhance enjoy enqueue enrich enroll ensure enter entitle enumerate equal
equip erase escape establish estimate evaluate evict evolve examine exceed exchange exclude execute exercise
exhaust exist exit expand expect experience experiment expire explain explode explore export expose express
extend extract face facilitate fail fall fear feature feed feel fetch fight figure fill filter finalize
find finish fire fit fix flag flatten flee flip float flow flush fly focus fold follow forbid force
forget forgive fork form format forward found frame free freeze fulfil fulfill gain gather generate get
give glance go govern grab grade grant greet grow guarantee guard guess guide halt handle hang happen harm
hash hate head heal hear heat help hesitate hide highlight hint hire hit hold hook hope host hover hunt hurry
hurt identify ignore illustrate imagine implement imply import impose improve include incorporate increase
increment indent index indicate infer influence inform inherit initialise initialize inject input insert
insist inspect inspire install instantiate instruct instrument integrate intend interact intercept interest
interfere interpret interrupt introduce invalidate invent invest investigate invite invoke involve isolate
iterate join judge jump justify keep kick kill kiss knock know label lack land last launch laugh lay lead
lean learn leave lend let lie lift like limit link list listen live load locate lock log look loop lose
love lower maintain make manage manipulate map mark marry match matter maximize mean measure meet melt
mention merge migrate mind minimize mirror miss mitigate mix mock modify monitor mount move multiply mutate
name navigate need negotiate nest normalize note notice notify number obey object observe obtain occupy
occur offer omit open operate oppose optimise optimize order organise organize orient output overflow
overlap overload override overwrite owe own pack page paint pair panic parse participate partition pass
paste patch pause pay perform permit persist persuade pick pin ping pipe place plan plant play plead please
plot plug point poll pop populate port pose possess post pour power practice practise pray precede predict
prefer prefix prepare prepend present preserve press pretend prevent print prioritize proceed process
produce profile program progress prohibit project promise promote prompt propagate propose protect prove
provide provision prune publish pull pump punch purchase purge pursue push put qualify quantify query
question queue quit quote race raise range rank rate reach react read realise realize reboot rebuild
recall receive reckon recognise recognize recommend reconcile reconnect record recover recreate recurse
redeploy redirect reduce refactor refer refine reflect refresh refuse regard regenerate register regret
reindex reinforce reject relate relax release relieve reload rely remain remark remember remind remove
rename render renew reorder repair repeat rephrase replace replay replicate reply report represent
reproduce request require reschedule rescue research reserve reset reshape reside resist resize resolve
respect respond rest restart restore restrict result resume retain retire retrieve retry return reuse
reveal reverse review revise revoke reward rewrite ride ring rise risk roll rotate round route rule run
rush sample satisfy save say scale scan scare schedule score scrape scratch scroll seal search secure see
seed seek seem select sell send separate serialize serve set settle shake shape share shift shine ship
shoot shout show shrink shuffle shut sign signal simplify simulate sing sink sit size skip sleep slice slide
slip slow smell smile snapshot solve sort sound span spawn speak specify speed spell spend spin split
spoil sponsor spread squash stack stage stand start state stay steal step stick stop store stream
strengthen stress stretch strike strip strive structure struggle study stuff submit subscribe subtract
succeed suck suffer suggest suit sum summarise summarize supply support suppose surprise surround survive
suspect suspend swap swear sweep swim switch sync synchronise synchronize tackle tag take talk tap target
taste teach tear tell tend terminate test thank think threaten throttle throw tick tie time toggle tolerate
touch tour trace track trade train transfer transform transition translate transmit transport trap travel
traverse treat trigger trim trip trust try tune turn tweak type uncomment underline understand undertake
undo unify uninstall unite unlock unmount unpack unset unsubscribe untar unwrap unzip update upgrade uphold
upload urge use utilise utilize validate value vanish vary verify view visit visualise visualize vote wait
wake walk wander want warn wash waste watch wear weigh welcome whisper win wipe wish withdraw witness
wonder work worry wrap write yell yield zip zoom
anchor author border captain chain chair champion command crew document father fund head house mother
partner pilot power script shelter source staff star style tag version voice
"""

# Irregular forms that stripping regular endings cannot reach.
_IRREGULAR = """
am are was were been became begun began bent bit bitten blew blown bore born borne bought bound broke
broken brought built burnt caught chose chosen clung came did done drew drawn dreamt drank drunk drove
driven dug dwelt ate eaten fed felt fell fallen fought found fled flung flew flown forbade forbidden forgot
forgotten forgave forgiven froze frozen gave given went gone got gotten grew grown hung had heard hid hidden
held knelt knew known laid led leant leapt learnt left lent lay lain lit lost made meant met mistook paid
proved proven quit rang ran rode ridden rose risen said sang sung sank sunk sat saw seen sought sold sent
shook shaken shone shot showed shown shrank shrunk shut slept slid slung spoke spoken sped spelt spent
spilt spun spat split spoilt spread sprang sprung stood stole stolen stuck stung stank strode struck
strove swore sworn swept swam swum swung took taken taught tore torn told thought threw thrown trod
understood undid undone upheld woke woken wore worn wove woven wept won wound withdrew wrote written
children men women people mice feet teeth geese data criteria phenomena indices matrices vertices analyses
bases theses crises
"""

_NOUNS = """
ability absence abstraction academy accent acceptance accident account accuracy achievement acid action
activity actor adapter addition address administration admin adoption adult advance advantage adventure
advertising advice affair age agency agenda agent aggregation agreement aid air aircraft airline airport
alarm album alert algorithm alias allocation allowance alternative ambition amount analysis analyst
anchor angle animal anniversary announcement answer anxiety apartment app appeal appearance appendix
apple application appointment approach approval architecture archive area argument arm army arrangement
array arrival arrow art article artifact artist aspect assembly assertion asset assignment assistance
assistant association assumption atmosphere attachment attack attempt attendance attention attitude
attribute audience audit author authority authorization authentication automation availability average
award awareness axis baby background backend backlog backup bag balance ball ban band bank banner bar
barrier base baseline basis basket batch bath battery battle beach bean bear beauty bed bedroom beer
beginning behalf behavior behaviour belief bell benchmark benefit bet bias bike bill binary binding bird
birth birthday bit blade blank blob block blog blood blueprint board boat body bomb bond bone bonus book
boolean boot border boss bottle bottleneck bottom boundary bowl box boy brain branch brand bread break
breakfast breath brick bridge broker brother browser brush bubble bucket budget buffer bug building bulk
bullet bundle burden bus business button buyer byte cabinet cable cache cake calendar call callback
camera camp campaign campus cancer candidate cap capability capacity capital captain car carbon card care
career cargo carpet carrier cart case cash cast castle cat catalog catalogue category cause ceiling cell
center centre century certificate chain chair chairman challenge champion championship chance change
changelog channel chaos chapter character characteristic charge charity chart chat check checkbox
checklist checkpoint cheek cheese chef chemical chest chicken chief child childhood chip chocolate choice
chunk church cigarette circle circuit circumstance citizen city claim class classification classroom
clause clerk client cliff climate clock clone closure cloud club clue cluster coach coal coast coat code
codebase coffee coin collaboration colleague collection collector college colon colony color colour
column combination comfort command comment commerce commission commit commitment committee commodity
communication community company comparison compatibility competition competitor compiler complaint
complexity compliance component composition compound compromise computation computer concentration
concept concern concert conclusion concurrency condition conference confidence config configuration
confirmation conflict confusion connection connector consensus consent consequence conservation
consideration consistency console constant constitution constraint construction constructor consultant
consumer consumption contact container content contest context continent contract contrast contribution
contributor control controller controversy convenience convention conversation conversion cookie copy
core corner corporation correction correlation cost cottage cotton council count counter country county
couple courage course court cousin coverage cow crack craft crash cream creation creator creature credit
crew crime criminal crisis criterion critic criticism crop cross crowd crown cruise cry culture cup cure
curiosity currency current curriculum cursor curve customer cycle dad daemon damage dance danger
dashboard database date daughter dawn day deadline deal dealer death debate debt debugger decade decimal
decision deck declaration decline decorator decrease default defeat defence defense deficit definition
degree delay delegate delivery demand democracy demo demonstration density department departure
dependency deployment deposit depth deputy description desert design designer desire desk destination
destruction detail detection detective developer development device diagram dialog dialogue diameter
diary dictionary diet difference difficulty digest dimension dinner direction directive director
directory dirt disability disaster discipline discount discovery discussion disease dish disk display
distance distinction distribution district diversity dividend division doc doctor doctrine document
documentation dog dollar domain donation door dose dot double doubt draft dragon drama drawer drawing
dream dress drink drive driver drop drug drum duck duration dust duty eagle ear earth ease east echo
economics economist economy edge edition editor education effect efficiency effort egg election
electricity element elephant elevator email embassy emergency emotion emphasis empire employee employer
employment encoding encounter encryption end endpoint enemy energy enforcement engine engineer
engineering enterprise entertainment enthusiasm entity entrance entry enum environment episode equality
equation equipment era error escape essay essence estate estimate ethics evaluation evening event
evidence evolution exam examination example exception exchange excitement excuse execution executive
exercise exhibition existence exit expansion expectation expense experience experiment expert expertise
expiration explanation exploration explosion export exporter exposure expression extension extent
extract eye fabric face facility fact factor factory failure faith fall fame family fan fantasy fare
farm farmer fashion fat fate father fault favor favour fear feature federation fee feedback feeling
fellow female fence festival fever fiction field fight fighter figure file filename film filter finance
finding finger fire firm fish fit fix fixture flag flame flash fleet flesh flight flood floor flow flower
fluid fly focus folder folk following food fool foot football force forecast foreign forest fork form
format formation formula fortune forum foundation fox fraction fragment frame framework fraud freedom
frequency friend friendship front frontend fruit fuel function functionality fund funding funeral fur
furniture future gain galaxy gallery game gap garage garbage garden gas gate gateway gauge gear gender
gene generation generator genius genre gentleman geography getter ghost gift girl glance glass globe glory
glossary glove goal god gold golf good governance government governor grace grade graduate grain grammar
grant graph graphic grass gravity grid ground group growth guarantee guard guess guest guidance guide
guideline guilt guitar gun guy habit hair half hall hand handler handling handshake hardware harm harmony
harvest hash hat hatred head header headline headquarters health hearing heart heat heaven height
helicopter hell helmet help helper hero hierarchy highlight highway hill hint hip historian history hit
hobby hold hole holiday home homepage honey honor honour hook hope horizon horror horse hospital host
hostname hotel hour house household housing human humor humour hunger hunt husband hypothesis ice icon
idea ideal identification identifier identity illness illusion illustration image imagination impact
implementation implication import importance impression improvement incentive incident income increase
independence index indication indicator individual industry inflation influence info information
infrastructure ingredient inheritance initiative injection injury ink inn innovation input inquiry insect
insert insight inspection inspiration installation installer instance instinct institution instruction
instrument instrumentation insurance integer integration integrity intelligence intensity intent
intention interaction interest interface interior internet interpretation interval intervention interview
introduction invasion invention inventory investigation investment investor invitation iron irony island
isolation issue item iteration jacket jail jar jaw jet jewel job joint joke journal journalist journey
joy judge judgment judgement juice jump junior jury justice justification kernel key keyboard keyword
kid kind king kingdom kiss kit kitchen knee knife knot knowledge lab label laboratory labor labour lack
ladder lady lake land landscape lane language lap laptop latency launch law lawn lawyer layer layout
lead leader leadership leaf league leak lease leather lecture leg legacy legend legislation lemon length
lesson letter level liability liberty library licence license lid life lifecycle lifetime lift light
limb limit limitation line link lion lip liquid list listener literature living load loan lobby location
lock log logger logging logic login logo loop lord loss lot love lover luck lunch lung machine magazine
magic magnitude mail mailbox mainstream maintainer maintenance majority maker male mall man management
manager manifest manner manual manufacturer map margin mark market marketing marriage mask mass master
match mate material math mathematics matrix matter maximum meal meaning means measure measurement meat
mechanism medal media medicine medium meeting member membership memory mention menu merchant mercy merge
merit mess message metadata metal metaphor meter method methodology metric middle middleware midnight
migration milk mill mind mine mineral minimum minister ministry minority minute miracle mirror mission
mistake mix mixture mode model module molecule mom moment momentum monday money monitor monitoring monkey
monster month monument mood moon morning mortgage mother motion motivation motor mount mountain mouse
mouth move movement movie mud mug multiple murder muscle museum music musician mutation mystery myth nail
name namespace narrative nation native nature navigation neck need needle negotiation neighbor neighbour
neighborhood nerve nest net network news newsletter newspaper night node noise nomination nonsense noon
norm north nose note notebook notice notification notion novel nucleus null number nurse nut object
objection objective obligation observation observer obstacle occasion occupation ocean odds offer office
officer official offset oil opening opera operation operator opinion opponent opportunity opposition
optimization option orange orbit order organ organisation organism organization orientation origin
outage outcome outline outlook output oven overhead overlay overview owner ownership oxygen pace pack
package packet page pain paint painting pair palace palm pan panel panic paper paragraph parameter parent
park parking parliament parse parser part participant participation particle partition partner
partnership party pass passage passenger passion password past pasta patch path patience patient pattern
pause pay payload payment peace peak peer pen penalty pencil people pepper percent percentage perception
performance period permission person personality perspective pet phase phenomenon philosophy phone photo
photograph phrase physics piano pick picture pie piece pig pile pill pilot pin pipe pipeline pitch pizza
place placeholder plan plane planet planning plant plastic plate platform play player pleasure plenty
plot plugin plus pocket poem poet poetry point pointer poison pole police policy politics poll pool pop
population port portal portfolio portion portrait position possession possibility post poster pot
potato potential pound poverty powder power practice praise precision predecessor prediction preference
prefix premise premium preparation presence present presentation preservation president press pressure
prevalence prevention preview price pride priest primary prince princess principal principle print
printer priority prison prisoner privacy privilege prize probability probe problem procedure proceeding
process processor produce producer product production profession professor profile profit program
programme programmer progress project projection promise promotion prompt proof propagation property
proportion proposal prosecution prospect protection protein protest protocol provider province provision
proxy psychology pub public publication publisher pull pulse punishment pupil purchase purpose push
puzzle quality quantile quantity quarter queen query quest question queue quota quotation quote rabbit
race rack radar radiation radio rail rain range rank rate ratio reach reaction reader reading reality
realm reason rebellion receipt receiver reception recipe recipient recognition recommendation record
recording recovery recruitment redirect reduction redundancy reference reflection reform refrigerator
refuge refusal regard regime region register registration registry regression regulation relation
relationship relative relay release relevance reliability relief religion reload remainder remedy
reminder removal rent repair replacement replica replication reply repo report reporter repository
representation representative reputation request requirement rescue research researcher reservation
reserve resident resistance resolution resolver resort resource respect response responsibility rest
restaurant restriction result retention retirement retry return revenue review revision revolution reward
rhythm rice ride rifle right ring rise risk ritual river road robot rock role roll rollback roof room
root rope rose route router routine row rule ruler rumor run runner runtime rush sack safety sail sailor
salad salary sale salt sample sanction sand sandbox satellite satisfaction sauce scale scan scandal scenario
scene schedule scheduler schema scheme scholar scholarship school science scientist scope score scraper
screen screenshot script sea seal search season seat second secret secretary section sector security
seed segment selection selector self sender senior sensation sense sensor sentence sentiment separator
sequence series servant server service session set setback setter setting settlement setup shade shadow
shaft shame shape shard share shareholder sheep sheet shelf shell shelter shift ship shirt shock shoe
shop shopping shore shortcut shot shoulder show shower sibling side sidebar sight sign signal signature
significance silence silk silver similarity simulation sin singer sink sister site situation size skill
skin sky slave sleep slice slide slot smell smile smoke snake snapshot snow soap soccer society sock
socket sofa software soil soldier solution son song soul sound soup source south space span speaker
spec specialist species specification specimen spectrum speech speed spell spending sphere spider spike
spine spirit split spokesman sponsor spot spread spring spy squad square stability stack stadium staff
stage stair stake stance standard star start starter state statement station statistic status stay
steak steel step stick stock stomach stone stop storage store storm story strain stranger strategy
straw stream street strength stress stretch strike string strip stroke structure struggle student studio
study stuff style subject submission subscriber subscription subset substance substitute suburb success
successor suffix sugar suggestion suicide suit suite sum summary summer summit sun sunday supermarket
supervisor supplier supply support supporter surface surgery surplus surprise survey survival survivor
suspect suspicion sweater switch symbol symptom syndrome syntax system table tablet tag tail tale
talent talk tank tap tape target task taste tax taxi tea teacher teaching team tear technique technology
teen teenager telephone telescope television temperature template temple tenant tendency tennis tension
tent term terminal territory terror test testament testing text texture thanks theater theatre theft
theme theory therapy thing thought thread threat threshold throat throne thumb ticket tide tie tier
timeline time timeout timer timestamp tip tissue title toast tobacco today toe toggle token tolerance toll
tomato tone tongue tool toolkit tooth top topic torch total touch tour tourist tournament towel tower
town toy trace track trade tradition traffic tragedy trail train trainer training trait transaction
transfer transformation transition translation transmission transport trap trash travel tray treasure
treatment treaty tree trend trial triangle tribe trick trigger trip troop trouble truck trust truth try
tube tune tunnel turn tutorial twin type uncle understanding union unit unity universe university upload
upgrade usage use user username utility vacation validation validator valley value van variable variant
variation variety vector vegetable vehicle vendor venture venue verdict verification version vessel
veteran victim victory video view viewer village violation violence virtue virus visibility vision visit
visitor voice volume volunteer vote voter voyage wage wagon waiter walk wall wallet war warehouse warning
warrior wave way weakness wealth weapon weather web webhook website wedding week weekend weight welfare
west whale wheel whisper widget width wife will wind window wine wing winner winter wire wisdom wish
witness wizard wolf woman wonder wood word work worker workflow workload workshop workspace world worry
worth wound wrapper writer writing yard year yield youth zone
"""

_ADJECTIVES = """
able absent absolute abstract academic acceptable accessible accurate acid active actual acute adaptive
additional adequate adjacent administrative advanced adverse affordable afraid aggregate aggressive
agile alive alternate alternative amazing ambiguous ancient angry annual anonymous anxious apparent
appropriate approximate arbitrary architectural artificial asleep associated asynchronous atomic attractive
audible authentic automated automatic autonomous available average awake aware awesome awful awkward bad
bare basic beautiful beneficial best better big binary bitter black blank blind blue bold boring brave
brief bright brilliant broad broken brown bulk busy calm capable careful careless casual central certain
cheap chemical chief civil classic classical clean clear clever close closed cloudy coarse cold collective
colourful colorful comfortable commercial common compact comparable compatible competent competitive
complete complex compliant complicated composite comprehensive compressed computational conceptual
concrete concurrent conditional confident confidential configurable conscious conservative considerable
consistent constant constitutional contemporary content continuous contrary convenient conventional cool
corporate correct costly crazy creative criminal critical crucial cruel cultural cumulative curious
current custom cute daily damp dangerous dark dead deaf dear decent declarative decorative deep default
defensive definite deliberate delicate delicious democratic dense dependent deprecated desirable
desperate destructive detailed deterministic different difficult digital diligent direct dirty
discrete distant distinct distributed diverse divine domestic dominant double downstream dramatic dry
dual due dull dumb durable dynamic eager early eastern easy economic educational effective efficient
elaborate elastic elderly electric electrical electronic elegant elementary eligible embedded emotional
empirical empty encrypted endless enormous entire environmental ephemeral equal equivalent essential
eternal ethical eventual evident evil exact excellent exceptional excessive exclusive executive
existing exotic expensive experimental explicit exponential extensive external extra extraordinary
extreme fair faithful false familiar famous fancy fantastic far fast fat fatal faulty favourable
favorable favourite favorite feasible federal female fierce final financial fine finite firm fit fixed
flat flexible fluent foolish foreign formal former fortunate forward fragile frank free frequent fresh
friendly frontal frozen full functional fundamental funny further fuzzy general generic generous
gentle genuine geographic geographical giant glad global golden good gorgeous graceful gradual grand
granular graphical grateful grave gray great greedy green grey gross guilty handy happy hard harmful harsh
healthy heavy helpful hidden hierarchical high historic historical holy homogeneous honest hopeful
horizontal horrible hostile hot huge human humble hungry hybrid ideal idempotent identical idle ignorant
ill illegal immediate immense immutable imperative implicit important impossible impressive inaccurate
inactive inadequate incoming incompatible incomplete inconsistent incorrect incremental independent
indirect individual industrial inevitable infinite informal initial inner innocent innovative insecure
instant intelligent intense intensive interactive interested interesting interior intermediate internal
international intuitive invalid invisible irrelevant isolated joint junior just keen kind large late
latent lateral latest lazy leading lean legal legitimate lengthy lexical liberal light lightweight likely
limited linear liquid literal little live lively local logical lone lonely long loose loud lovely low
loyal lucky mad magic magnetic main major male mandatory manual many marginal marine married massive
mathematical mature maximal maximum mean meaningful mechanical medical medium mental mere messy metric
middle mild military minimal minimum minor miserable missing mobile moderate modern modest modular
monotonic monthly moral multiple musical mutable mutual naive naked narrow nasty national native natural
naughty naval near neat necessary negative nervous net neutral new nice noble noisy nominal normal
northern notable novel nuclear numeric numerical numerous obsolete obvious occasional odd offensive
official offline okay old online opaque open operational opposite optimal optional oral orange ordinary
organic original orthogonal outer outgoing overall overdue own painful pale parallel partial particular
passive past patient peaceful peculiar pending perfect periodic permanent persistent personal physical
pink plain plausible pleasant plenty plural pluggable polite political poor popular portable positive
possible potential powerful practical pragmatic precious precise predictable preferred pregnant
preliminary premium present pretty previous primary prime primitive principal prior private proactive
probable productive professional profitable profound programmatic progressive prominent promising proper
proportional proprietary prospective protective proud public pure purple quick quiet radical random rapid
rare rational raw reactive readable ready real realistic reasonable recent reckless recursive red
redundant regional regular related relative relevant reliable religious reluctant remarkable remote
renewable repeated representative required resilient respective responsible responsive restful restless
restricted reusable reverse rich ridiculous right rigid robust romantic rough round routine royal rude
rural sacred sad safe same satisfied scalar scalable scared scientific secondary secret secure selected
senior sensible sensitive separate sequential serial serious severe shallow shared sharp short shy sick
significant silent silly similar simple simultaneous sincere single skilled slight slim slow small smart
smooth sober social soft solar sole solid sophisticated sorry sound southern spare sparse spatial special
specific spiritual splendid stable stale standalone standard stateful stateless static statistical steady
steep sticky stiff still straight strange strategic strict striking strong structural stubborn stupid
subject subsequent substantial subtle successful sudden sufficient suitable sunny super superb superior
supreme sure surprised surprising suspicious sustainable sweet swift symbolic sympathetic synchronous
synthetic systematic tall technical temporal temporary tender terrible textual thick thin thorough tidy
tight tiny tired top total tough toxic traditional transactional transient transparent tremendous
tricky trivial tropical true typical ugly ultimate unable unaware uncertain unclear unconscious
underlying undesirable uneven unexpected unfair unfortunate unhappy uniform unique universal unknown
unlikely unnecessary unpleasant unsafe unstable unusual upper upset upstream urban urgent usable useful
useless usual vague valid valuable variable various vast verbal verbose vertical viable virtual visible
visual vital vivid volatile voluntary vulnerable warm weak wealthy weekly weird welcome western wet white
wide wild willing wise wonderful wooden worried worse worst worth worthy wrong yellow young
"""

_ADVERBS = """
accordingly actually additionally afterwards ahead alike almost already alright alternatively altogether
anew apart apparently approximately aside badly barely basically beforehand briefly broadly certainly
clearly closely commonly completely consequently considerably constantly conversely correctly currently
deeply definitely deliberately directly doubtless easily effectively efficiently elsewhere entirely
equally especially essentially eventually evidently exactly exclusively explicitly extremely fairly
finally firmly firstly formerly forth fortunately frankly freely frequently fully fundamentally generally
gently genuinely gradually greatly hardly heavily highly honestly hopefully ideally immediately importantly
increasingly indeed independently indirectly individually inevitably initially instantly instead
internally largely lately later likewise literally locally loosely luckily mainly manually merely
moreover mostly namely naturally nearly necessarily neatly newly nicely normally notably obviously
occasionally officially okay only optionally originally otherwise overall partially particularly
partly perfectly periodically permanently personally physically plainly possibly potentially precisely
predominantly presently presumably previously primarily principally probably promptly properly purely
quickly quietly randomly rapidly rarely readily really reasonably recently regardless regularly
relatively reliably remotely repeatedly respectively roughly safely secondly seemingly separately
seriously severely sharply shortly significantly silently similarly simply simultaneously slightly slowly
smoothly solely somehow specifically steadily strictly strongly subsequently substantially successfully
suddenly sufficiently supposedly surely surprisingly temporarily thereafter thereby thoroughly tightly
today together tomorrow tonight totally traditionally transparently truly twice typically ultimately
undoubtedly unfortunately uniformly uniquely universally unless unlikely upfront upward upwards usually
vastly virtually visually whatsoever wholly widely yesterday
better best worse worst faster fastest easier easiest larger largest smaller smallest higher highest lower
lowest newer newest older oldest simpler simplest greater greatest longer longest shorter shortest earlier
earliest bigger biggest fewer fewest safer safest cheaper harder wider narrower stronger weaker slower
quicker closer further farther backward backwards forward forwards
"""

# Frequent technical words that are ordinary words in documentation (not names when they open a sentence).
# Acronyms are left out: "API" or "HTTP" in capitals is a term.
_TECHNICAL = """
admin alerting allowlist async asynchronous auth autocomplete autoscaling backoff backend bitmap
blocklist boolean browser byte bytecode callback cardinality changelog checksum codec compose config cron
dashboard dataset datastore debug decorator dedup deduplication default denylist deserialization docs
dockerfile dropdown email exporter failover fetch filesystem firewall frontend gzip hashmap histogram
homepage hostname hotfix hyperlink iframe inline integer interop kernel kubelet localhost lockfile login
logout lookup metadata microservice middleware mixin multiline mutex namespace nullable offline online
onboarding parser pathname plaintext plugin pod polyfill prefetch preload preprocessor quantile readme
realtime recap redirect refactor regex relabel relabeling relabelling repo runtime scalar scraper
serializer sharding sidecar stderr stdin stdout subclass subdirectory subfolder subgraph subnet
subprocess subquery substring subtype superclass timeseries timezone tooltip toolchain tuple typo unicode
unix uptime walkthrough webhook websocket whitelist blacklist wiki wildcard workflow completion
deprecation redirection audio credential singular exec increment decrement spoiler yep nope intro
"""

COMMON: frozenset[str] = frozenset(
    (_FUNCTION_WORDS + _VERBS + _IRREGULAR + _NOUNS + _ADJECTIVES + _ADVERBS + _TECHNICAL).split()
)

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_VERB_FORMS = frozenset((_VERBS + _IRREGULAR).split())
_VERB_ONLY = frozenset(_VERBS.split()) - frozenset((_NOUNS + _ADJECTIVES + _TECHNICAL).split())

# Labels, types and literal values of documentation tables and admonitions: never an entity.
GENERIC: frozenset[str] = frozenset(
    _words(
        """
    description descriptions default defaults type types name names value values example examples note notes
    tip tips hint warning warnings caution danger important attention info information summary details detail
    null nil none true false string strings str integer int float double boolean bool number numeric char byte bytes
    required optional yes no ok okay todo fixme tbd nan inf infinity undefined unknown misc miscellaneous
    overview introduction recap conclusion contents see also deprecated experimental id ids usage syntax
    list dict dictionary tuple array object any void n/a na
    """
    )
)

# Python keywords: a code span holding only one of these is not a term.
KEYWORDS: frozenset[str] = frozenset(
    _words(
        """
    and as assert async await break class continue def del elif else except finally for from global if import
    in is lambda nonlocal not or pass raise return try while with yield self cls
    """
    )
)

# Words that open an instruction or a clause; dropped from the front of a capitalised run that opens
# a sentence ("Install Docker" -> "Docker"). Words ending in -ing, -ed and -ly count too (see `leading`).
LEADING: frozenset[str] = frozenset(
    _words(
        """
    add adjust allow apply ask avoid build call change check choose click close configure connect consider
    copy create declare define delete deploy disable do download edit enable ensure enter find follow get go
    help import include install keep learn let list load make mark move note open pass paste pick press put
    read refer register remember remove rename replace request restart return run save see select send set
    show sign specify start stop submit switch take tell try turn type update upgrade upload use verify view
    visit wait watch write
    very more most less least just only also even still here there now then again already almost maybe please
    """
    )
)

_INVARIANT = frozenset(
    _words(
        """
    series species news always perhaps its this his hers ours yours theirs has was does is yes thus plus bus gas
    lens alias atlas canvas chaos bias physics mathematics economics ethics politics statistics analytics
    metadata kudos sometimes towards afterwards besides whereas various previous numerous famous serious
    obvious continuous analysis basis axis crisis thesis status corpus virus campus bonus census consensus
    prometheus kubernetes
    """
    )
)


def _stems(w: str) -> list[str]:
    """Possible base forms of an inflected word: "adds" -> add, "enabled" -> enable, "starting" -> start."""
    out: list[str] = []
    if w.endswith("ies") and len(w) > 4:
        out += [w[:-3] + "y", w[:-1]]
    elif w.endswith("es") and len(w) > 3:
        out += [w[:-2], w[:-1]]
    elif w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        out.append(w[:-1])
    if w.endswith("ied") and len(w) > 4:
        out.append(w[:-3] + "y")
    elif w.endswith("ed") and len(w) > 3:
        out += [w[:-2], w[:-1]]
        if w[-3] == w[-4]:  # "stopped"
            out.append(w[:-3])
    if w.endswith("ing") and len(w) > 4:
        out += [w[:-3], w[:-3] + "e"]
        if len(w) > 5 and w[-4] == w[-5]:  # "running"
            out.append(w[:-4])
    if w.endswith("ily") and len(w) > 5:
        out.append(w[:-3] + "y")
    elif w.endswith("ally") and len(w) > 6:
        out += [w[:-2], w[:-4]]
    elif w.endswith("ly") and len(w) > 4:
        out.append(w[:-2])
    return out


_PREFIXES = ("pre", "re", "un", "de", "dis", "non", "auto", "sub", "over", "under", "multi", "inter", "mis", "co")


def is_common(word: str) -> bool:
    """An ordinary English word (case ignored), directly or by a regular inflection; a hyphenated word
    is ordinary when every part is. Mixed-case words ("FastAPI", "WebSocket") never are."""
    if not word:
        return False
    if any(c.isupper() for c in word[1:]) and not word.isupper():
        return False
    w = word.lower().replace("’", "'")
    if w in COMMON or w in GENERIC:
        return True
    if "-" in w:
        parts = [p for p in w.split("-") if p]
        return bool(parts) and all(is_common(p) for p in parts)
    if not w.isalpha():
        return False
    if any(s in COMMON for s in _stems(w)):
        return True
    if w.endswith("ness") and len(w) > 7 and is_common(w[:-4]):  # "staleness"
        return True
    # "precomputed", "rebasing", "autocompletion": a prefix on an ordinary word
    return any(w.startswith(p) and len(w) - len(p) >= 4 and is_common(w[len(p) :]) for p in _PREFIXES)


def is_inflection(word: str) -> bool:
    """An -ing, -ed or -ly form of a common word ("Using", "Started", "Optionally"), not a word of its
    own like "building"."""
    w = word.lower()
    return w.endswith(("ing", "ed", "ly")) and len(w) > 4 and w not in COMMON and is_common(w)


def is_verb(word: str) -> bool:
    """Can `word` be a verb form ("founded", "taught", "runs", "is headquartered")? Any -ed word counts:
    a participle says something happened between two names."""
    w = word.lower()
    if w in _VERB_FORMS or (w.endswith("ed") and len(w) > 4):
        return True
    return any(s in _VERB_FORMS for s in _stems(w)) if w.endswith(("s", "ing")) else False


def leading(word: str) -> bool:
    """Does `word` open an instruction or a clause rather than a name ("Install", "Using", "Very",
    "Generates")? Words that are nouns too ("Start", "Sample") do not."""
    w = word.lower()
    if w in LEADING or w in _VERB_ONLY or is_inflection(w):
        return True
    return w.endswith("s") and (w[:-1] in _VERB_ONLY or (w.endswith("es") and w[:-2] in _VERB_ONLY))


def singular(word: str) -> str:
    """The singular of a regular plural ("nodes", "libraries", "processes"), else the word as given.
    Words ending in -ss, -us, -is and a few invariant words ("series", "metadata") are left alone."""
    w = word
    if len(w) < 3 or not w.isalpha() or not w.endswith("s") or w in _INVARIANT:
        return w
    if w.endswith(("ss", "us", "is")):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-1] if w[:-1] in COMMON else w[:-3] + "y"  # "movies", "libraries"
    if w.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return w[:-1] if w[:-1] in COMMON else w[:-2]  # "caches", "branches"
    return w[:-1]
